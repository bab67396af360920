"""Predictions: every fine-tune writes its kept epoch's dev predictions; `predict` on the dev file, from
the workdir and from its export, gives the same bytes; bad input gets one line and exit 2."""

import csv
import gzip
import io
import json

import pytest

from electra_jax.cli import main
from electra_jax.data import SAMPLE_CORPUS


def _tsv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny random-init classifier fine-tuned for one epoch, and its export (relative paths)."""
    from test_qa import _random_init

    root = tmp_path_factory.mktemp("predict")
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        lines = [line.strip() for line, _ in zip(f, range(3000)) if len(line.split()) > 4][:200]
    rows = [(s, "lord" if " lord" in s.lower() else "other") for s in lines]
    _tsv(root / "train.tsv", rows[:160])
    _tsv(root / "dev.tsv", rows[160:])
    init = _random_init(root)
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["finetune", "--init", init, "--task", "classification", "--train", "train.tsv", "--dev",
                     "dev.tsv", "--workdir", "ft", "--config", "finetune/tiny", "--config.head=hf",
                     "--config.task.text_a=text", "--config.task.max_len=32", "--config.num_epochs=2",
                     "--config.optim.learning_rate=1e-3"]) == 0
        assert main(["export", "--workdir", "ft", "--out", "hf"]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_fine_tuning_writes_its_dev_predictions_and_they_give_its_scores(run):
    results = json.loads((run / "ft" / "results.json").read_text())
    rows = [json.loads(line) for line in (run / "ft" / "seed_0" / "dev_predictions.jsonl").read_text().splitlines()]
    with open(run / "dev.tsv", newline="") as f:
        dev = list(csv.DictReader(f, delimiter="\t"))
    assert [r["text"] for r in rows] == [d["text"] for d in dev]
    assert [r["gold"] for r in rows] == [d["label"] for d in dev]
    assert all(r["prediction"] in ("lord", "other") and 0.5 <= r["probability"] <= 1 for r in rows)
    accuracy = sum(r["prediction"] == r["gold"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(results["runs"][0]["dev/accuracy"], abs=1e-12)


def test_predict_reproduces_the_dev_predictions_from_the_workdir_and_the_export(run, monkeypatch, capsys):
    monkeypatch.chdir(run)
    expected = (run / "ft" / "seed_0" / "dev_predictions.jsonl").read_bytes()
    for model in ("ft", "hf"):
        assert main(["predict", "--model", model, "--input", "dev.tsv", "--out", f"{model}.jsonl"]) == 0
        assert (run / f"{model}.jsonl").read_bytes() == expected, model
        assert "accuracy" in capsys.readouterr().err  # the input had gold labels: scored
    # Plain lines on stdin, CSV on stdout: the same predictions, without gold.
    texts = [json.loads(line)["text"] for line in expected.decode().splitlines()]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts) + "\n"))
    assert main(["predict", "--model", "hf", "--input", "-", "--out", "-", "--format", "csv"]) == 0
    got = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    want = [json.loads(line) for line in expected.decode().splitlines()]
    assert [(r["text"], r["prediction"], float(r["probability"])) for r in got] == [
        (w["text"], w["prediction"], w["probability"]) for w in want]
    assert "gold" not in got[0]


def test_predict_refuses_bad_input_with_one_line_and_writes_nothing(run, monkeypatch, capsys):
    monkeypatch.chdir(run)
    (run / "other.csv").write_text("sentence,label\nhello,lord\n")
    (run / "empty.tsv").write_text("")
    cases = [
        (["--model", "ft", "--input", "other.csv"], "no column 'text'"),
        (["--model", "ft", "--input", "empty.tsv"], "empty.tsv: no rows"),
        (["--model", "init/discriminator", "--input", "dev.tsv"], "not a fine-tuned model"),
        (["--model", "init", "--input", "dev.tsv"], "no config.json; expected a `finetune` --workdir or its export"),
        (["--model", "ft", "--input", "missing.tsv"], "missing.tsv: no such file"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["predict", *args, "--out", "bad.jsonl"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (run / "bad.jsonl").exists()


def test_write_test_gives_glue_submission_files(tmp_path, monkeypatch, capsys):
    # TFDS's mock data stands in for GLUE (random texts and labels, test labels hidden as the real ones).
    tfds = pytest.importorskip("tensorflow_datasets")
    from test_qa import _random_init

    monkeypatch.chdir(tmp_path)
    init = _random_init(tmp_path)
    expected = {"mnli": {"MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"}, "cola": {"CoLA.tsv"}, "stsb": {"STS-B.tsv"}}
    with tfds.testing.mock_data(num_examples=6):
        for task, files in expected.items():
            assert main(["finetune", "--init", init, "--task", task, "--workdir", task, "--config", "finetune/tiny",
                         "--config.num_epochs=1", "--config.task.max_len=16", "--config.head=hf", "--download",
                         "--write-test"]) == 0, task
            assert {p.name for p in (tmp_path / task / "test").iterdir()} == files
            for name in files:
                lines = (tmp_path / task / "test" / name).read_text().splitlines()
                assert lines[0] == "index\tprediction" and len(lines) == 1 + 6, (name, lines)
                index, values = zip(*(line.split("\t") for line in lines[1:]))
                assert list(map(int, index)) == sorted(map(int, index))
                if task == "mnli":
                    assert set(values) <= {"entailment", "neutral", "contradiction"}
                elif task == "cola":
                    assert set(values) <= {"0", "1"}
                else:
                    assert all(len(v.split(".")[1]) == 3 for v in values)  # a similarity on 0-5, 3 decimals
    capsys.readouterr()  # a task without a GLUE test split: refused before fine-tuning
    (tmp_path / "x.csv").write_text("sentence,label\na b,x\n")
    assert main(["finetune", "--init", init, "--task", "classification", "--train", "x.csv", "--dev", "x.csv",
                 "--workdir", "f", "--write-test"]) == 2
    assert "has no GLUE test split" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_tagging_predictions_per_word_from_conll_with_or_without_tags(tmp_path, monkeypatch, capsys):
    from test_qa import _random_init

    monkeypatch.chdir(tmp_path)
    sentences = [[("the", "O"), ("lord", "B-PER"), ("spake", "O")], [("unto", "O"), ("moses", "B-PER")]] * 8
    conll = "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n"
    (tmp_path / "train.conll").write_text(conll)
    (tmp_path / "dev.conll").write_text(conll)
    assert main(["finetune", "--init", _random_init(tmp_path), "--task", "tagging", "--train", "train.conll",
                 "--dev", "dev.conll", "--workdir", "ner", "--config", "finetune/tiny", "--config.num_epochs=1",
                 "--config.task.max_len=16"]) == 0
    dev = [json.loads(line) for line in (tmp_path / "ner" / "seed_0" / "dev_predictions.jsonl").read_text().splitlines()]
    assert dev[0]["tokens"] == ["the", "lord", "spake"] and dev[0]["gold"] == ["O", "B-PER", "O"]
    assert len(dev[0]["prediction"]) == 3 and set(dev[0]["prediction"]) <= {"O", "B-PER"}
    # Tokens only, one per line (no tags): the same predictions, no gold.
    (tmp_path / "words.conll").write_text("\n\n".join("\n".join(w for w, _ in s) for s in sentences) + "\n")
    assert main(["predict", "--model", "ner", "--input", "words.conll", "--out", "p.jsonl"]) == 0
    got = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [g["prediction"] for g in got] == [d["prediction"] for d in dev] and "gold" not in got[0]
    (tmp_path / "bad.conll").write_text("the O\nlord\n")
    capsys.readouterr()
    assert main(["predict", "--model", "ner", "--input", "bad.conll", "--out", "q.jsonl"]) == 2
    assert "bad.conll:2: expected `token ... tag`" in capsys.readouterr().err and not (tmp_path / "q.jsonl").exists()
