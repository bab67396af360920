"""What a new user met in a fresh clone that ended in a wrong result with exit 0, or in a workdir no
rerun could use: each case is reproduced as they met it and checked on the files it leaves (tokenizer
bytes, exported vocabularies, results.json) and the exit code, not only on the message."""

import csv
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from electra_jax.config import load_config
from electra_jax.data import SAMPLE_CORPUS
from electra_jax.data.builder import BuildArgs, build
from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer
from electra_jax.pretrain import TrainingError, pretrain
from electra_jax.signals import StopRequest


def _vocab(tokenizer_json) -> dict:
    return json.loads(open(tokenizer_json).read())["model"]["vocab"]


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """Two corpora (the two halves of the sample corpus), each with its own 2,048-piece tokenizer (the
    same size, so ids and sizes alone cannot tell them apart) and its own build."""
    root = tmp_path_factory.mktemp("two")
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        lines = f.read().splitlines()
    half = len(lines) // 2
    builds = {}
    for name, part in (("a", lines[:half]), ("b", lines[half:])):
        corpus = root / f"{name}.txt"
        corpus.write_text("\n".join(part) + "\n")
        tok = train_tokenizer(part, 2048)
        assert tok.get_vocab_size() == 2048
        save_tokenizer(tok, str(root / f"tok_{name}"))
        build(BuildArgs(tokenizer=str(root / f"tok_{name}"), out=str(root / f"data_{name}"),
                        inputs=[str(corpus)], seq_len=64, shards=2, eval_fraction=0.0, progress=False))
        builds[name] = str(root / f"data_{name}")
    return builds


def _config(data, *overrides):
    return load_config("tiny", [f"--config.data.path={data}", "--config.num_train_steps=4",
                                "--config.train.save_every=2", "--config.train.eval_every=0",
                                "--config.train.async_checkpoints=False", "--config.data.shuffle_buffer=64",
                                *overrides])


@pytest.mark.slow
def test_resume_on_data_of_another_tokenizer_is_refused_and_each_step_exports_its_own(two_builds, tmp_path):
    """Issue 31.1: resuming with data built by another tokenizer of the same size went on (exit 0),
    replaced the workdir's tokenizer.json, and `export --step` of the earlier step shipped the new
    vocabulary with the old weights."""
    from electra_jax.cli import main

    workdir, one = tmp_path / "run", jax.devices()[:1]
    pretrain(_config(two_builds["a"]), str(workdir), max_steps=2, devices=one, progress=False)
    tokenizer_a = _md5(workdir / "tokenizer.json")
    assert tokenizer_a == _md5(f"{two_builds['a']}/tokenizer.json")

    with pytest.raises(TrainingError, match=r"step 2 was trained with tokenizer [0-9a-f]{16} \(.*run/tokenizer"
                                            r".json\) but .*data_b was built with tokenizer [0-9a-f]{16}; the "
                                            r"vocabularies differ .*--config.data.change_tokenizer=True"):
        pretrain(_config(two_builds["b"]), str(workdir), devices=one, progress=False)
    assert _md5(workdir / "tokenizer.json") == tokenizer_a
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf2")]) == 0
    assert _vocab(tmp_path / "hf2" / "discriminator" / "tokenizer.json") == _vocab(f"{two_builds['a']}/tokenizer.json")

    # asked for: it continues on B's vocabulary, and each checkpoint still exports with its own
    pretrain(_config(two_builds["b"], "--config.data.change_tokenizer=True"), str(workdir), devices=one,
             progress=False)
    assert _md5(workdir / "tokenizer.json") == _md5(f"{two_builds['b']}/tokenizer.json")
    for step, data in ((2, "a"), (4, "b")):
        out = tmp_path / f"hf{step}"
        assert main(["export", "--workdir", str(workdir), "--step", str(step), "--out", str(out)]) == 0
        for tower in ("discriminator", "generator"):
            assert _vocab(out / tower / "tokenizer.json") == _vocab(f"{two_builds[data]}/tokenizer.json"), (step, tower)


# One CPU device and fast compiles for the CLI children.
CHILD_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1"}


def _cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "electra_jax.cli", *args], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=600)


def _stop_when(cwd, args, ready, signum):
    """Run the CLI, send `signum` once `ready()` holds, and return the finished process's output."""
    child = subprocess.Popen([sys.executable, "-m", "electra_jax.cli", *args], cwd=cwd, env=CHILD_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ready() and child.poll() is None:
        time.sleep(0.2)
    child.send_signal(signum)
    out, err = child.communicate(timeout=300)
    return child.returncode, out, err


def _lord_or_other(path, n, skip=0, text="text") -> float:
    """Real text with a label a model can learn: sample-corpus verses, "lord" in them or not; returns
    the share of the majority class."""
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        verses = [line.strip() for line in f if len(line.split()) > 4][skip:skip + n]
    labels = ["lord" if " lord" in v.lower() else "other" for v in verses]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((text, "label"))
        writer.writerows(zip(verses, labels))
    return max(labels.count("lord"), labels.count("other")) / len(labels)


class _StopAfter(StopRequest):
    """SIGTERM as the loop sees it, on its `n`-th look (the loop looks once per step and once at each
    epoch's end), so the test stops it at a chosen step."""

    def __init__(self, n):
        super().__init__(enabled=False)
        self.looks, self.n = 0, n

    @property
    def requested(self):
        self.looks += 1
        return "SIGTERM" if self.looks >= self.n else None

    @requested.setter
    def requested(self, value):
        pass


@pytest.mark.slow
def test_fine_tuning_stopped_inside_and_between_epochs_resumes_to_the_straight_result(random_discriminator,
                                                                                       tmp_path):
    """Two seeds, the best epoch kept (so the latest state is not the kept checkpoint): stopped inside
    seed 0's first epoch, then at the end of seed 1's first epoch, then finished, it ends with the
    results and kept weights of a run never stopped."""
    from electra_jax.finetune.run import finetune

    _lord_or_other(tmp_path / "train.csv", 96)
    _lord_or_other(tmp_path / "dev.csv", 40, skip=96)
    config = lambda: load_config("finetune/tiny", [
        "--config.task.name=classification", f"--config.task.train={tmp_path / 'train.csv'}",
        f"--config.task.dev={tmp_path / 'dev.csv'}", "--config.task.text_a=text", "--config.task.max_len=24",
        "--config.num_epochs=2", "--config.batch_size=16", "--config.model_selection=best"])
    run = lambda workdir, stop=None: finetune(config(), random_discriminator, str(tmp_path / workdir), seeds=2,
                                              devices=jax.devices()[:1], progress=False, stop=stop)
    straight = run("straight")
    # 6 steps per epoch; a look per step and one per epoch end: look 3 is inside seed 0's first epoch
    assert run("stopped", _StopAfter(3)) == {"interrupted": True, "seed": 0}
    assert os.listdir(tmp_path / "stopped" / "seed_0" / "resume" / "checkpoints") == ["3"]
    # resumed at step 3: seed 0 takes 3 + 1 + 6 + 1 looks, then seed 1's first epoch ends at look 18
    assert run("stopped", _StopAfter(18)) == {"interrupted": True, "seed": 1}
    assert json.loads((tmp_path / "stopped" / "seed_0" / "result.json").read_text())["history"] == \
        straight["history"][0]
    assert not (tmp_path / "stopped" / "seed_0" / "resume").exists()
    resumed = run("stopped")
    assert resumed["runs"] == straight["runs"] and resumed["history"] == straight["history"]
    for seed in (0, 1):  # the kept checkpoints hold the same weights
        step = str(straight["runs"][seed]["step"])
        a, b = (ocp.PyTreeCheckpointer().restore(tmp_path / w / f"seed_{seed}" / "checkpoints" / step / "state")
                for w in ("straight", "stopped"))
        jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_ctrl_c_in_pretraining_saves_the_step_and_a_second_stops_at_once(kjv64, tmp_path):
    """Issue 31.4: Ctrl-C during `pretrain` saved nothing and printed a traceback."""
    run = ["pretrain", "--config", "tiny", "--workdir", "run", "--data", kjv64, "--config.train.log_every=1",
           "--config.train.eval_every=0", "--config.num_train_steps=100000", "--config.train.save_every=100000"]
    log = tmp_path / "run" / "metrics.jsonl"
    code, out, err = _stop_when(tmp_path, run, lambda: log.exists() and len(log.read_text().splitlines()) >= 2,
                                signal.SIGINT)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    saved = ocp.CheckpointManager(str(tmp_path / "run" / "checkpoints")).all_steps()
    assert len(saved) == 1 and f"stopped by Ctrl-C: saved step {saved[0]}" in out
    assert "Ctrl-C: saving this step, then stopping" in err



def test_the_second_ctrl_c_stops_at_once_with_one_line(monkeypatch, capsys):
    from electra_jax import cli

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # Python runs handlers between bytecodes; give it some
        assert stop.requested == "Ctrl-C"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.CONFIG_COMMANDS, "pretrain", interrupted)
    capsys.readouterr()
    assert cli.main(["pretrain", "--config", "tiny", "--workdir", "w"]) == 130
    assert capsys.readouterr().err == ("electra-jax: pretrain interrupted (Ctrl-C); rerun the same command "
                                       "to continue\n")


def test_user_mistakes_get_one_line_naming_the_path_and_exit_2(random_discriminator, tmp_path, capsys):
    """Issue 31.6-31.12: each of these printed a traceback (or an error naming no file)."""
    from electra_jax.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "train.csv").write_text("text,label\nhello,a\n")
    (tmp_path / "readonly").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")  # a workdir as far as export's first check goes
    (tmp_path / "readonly").chmod(0o500)
    generator = random_discriminator.replace("discriminator", "generator")
    cases = [
        (["build-data", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "d")],
         f"{tmp_path / 'empty'}: no files in this directory"),
        (["tokenizer", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "t")],
         f"{tmp_path / 'empty'}: no files in this directory"),
        (["build-data", "--out", str(tmp_path / "a-file")],
         f"--out {tmp_path / 'a-file'} is a file; give a directory"),
        (["pretrain", "--config", str(tmp_path / "train.csv"), "--workdir", str(tmp_path / "w")],
         f"--config {tmp_path / 'train.csv'}: not a config file (a preset name, or a Python file"),
        (["export", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "a-file")],
         f"--out {tmp_path / 'a-file'} is a file; give a directory"),
        (["tokenizer", "--out", str(tmp_path / "a-file")], f"--out {tmp_path / 'a-file'} is a file"),
        (["tokenizer", "--out", str(tmp_path / "readonly" / "tok")],
         f"cannot write to --out {tmp_path / 'readonly' / 'tok'}: Permission denied"),
        (["import", "--discriminator", generator, "--generator", random_discriminator, "--workdir",
          str(tmp_path / "imported")], "--discriminator and --generator are swapped"),
    ]
    if os.geteuid() == 0:  # root writes anywhere: the read-only case cannot happen
        cases = [c for c in cases if "readonly" not in c[0][-1]]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists() and not (tmp_path / "imported").exists()

    # a directory of text files is a corpus, read in sorted path order (hidden files left out)
    corpus = tmp_path / "corpus"
    (corpus / "b").mkdir(parents=True)
    (corpus / ".git").mkdir()
    (corpus / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        lines = f.read().splitlines()[:400]
    (corpus / "b" / "2.txt").write_text("\n".join(lines[200:]) + "\n")
    (corpus / "a.txt").write_text("\n".join(lines[:200]) + "\n")
    assert main(["build-data", "--input", str(corpus), "--out", str(tmp_path / "d"), "--seq-len", "32",
                 "--shards", "1", "--workers", "1", "--eval-fraction", "0"]) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["input"]["files"] == 2 and manifest["input"]["lines"] == len([x for x in lines if x.strip()])


def _packing(out) -> bool:
    """Packed examples have reached build-data's buckets: its workers run (a Ctrl-C while the pool
    starts is lost, by design) and its shards are not written yet."""
    return any(p.stat().st_size for p in out.glob(".build-data-tmp/*.bin"))


def test_ctrl_c_during_build_data_is_one_line_and_leaves_nothing(tmp_path):
    """Issue 31.9: a chained IndexError + KeyboardInterrupt traceback. Ctrl-C reaches the whole
    foreground process group (the workers too), as a terminal sends it."""
    corpus = tmp_path / "corpus.txt"
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        corpus.write_text(f.read() * 6)
    child = subprocess.Popen([sys.executable, "-m", "electra_jax.cli", "build-data", "--input", str(corpus),
                              "--out", "d", "--workers", "2", "--shards", "2"], cwd=tmp_path, env=CHILD_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _packing(tmp_path / "d"):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, (out, err)
    assert err == "electra-jax: build-data interrupted (Ctrl-C); rerun the same command to continue\n"
    assert not (tmp_path / "d").exists()


def test_sigterm_during_build_data_leaves_nothing_and_the_rerun_builds(tmp_path):
    """A killed build (SIGTERM: `timeout`, a batch system, a closed session) stops as Ctrl-C does, and the
    same command then builds without --overwrite."""
    corpus = tmp_path / "corpus.txt"
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        corpus.write_text(f.read() * 6)
    command = [sys.executable, "-m", "electra_jax.cli", "build-data", "--input", str(corpus), "--out", "d",
               "--workers", "2", "--shards", "2"]
    child = subprocess.Popen(command, cwd=tmp_path, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _packing(tmp_path / "d"):
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, (out, err)
    assert err == "electra-jax: build-data interrupted (SIGTERM); rerun the same command to continue\n"
    assert not (tmp_path / "d").exists()
    rerun = subprocess.run(command, cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["tokens"]["kept_fraction"] == 1.0


@pytest.mark.slow
def test_the_default_fine_tune_of_a_small_csv_learns_survives_sigterm_resumes_and_exports(random_discriminator,
                                                                                           tmp_path, capsys,
                                                                                           monkeypatch):
    """The command as a new user types it, defaults only, on 300 rows (240 train, 60 dev).
    Issue 31.13-31.14: the defaults (3 epochs) stayed at the majority class, and the default head could
    not be exported (said only after training). Issue 31.3 and 31.5: SIGTERM exited 143 and the rerun
    started over; a Ctrl-C left a workdir whose every rerun failed (StepAlreadyExistsError); a rerun
    into a finished workdir trained again and overwrote results.json. (That a stopped run ends exactly
    as a straight one is the next test's.)"""
    _lord_or_other(tmp_path / "train.csv", 240, text="sentence")
    majority = _lord_or_other(tmp_path / "dev.csv", 60, skip=240, text="sentence")
    args = ["finetune", "--init", random_discriminator, "--task", "classification", "--train", "train.csv",
            "--dev", "dev.csv", "--workdir", "ft"]
    log = tmp_path / "ft" / "seed_0" / "metrics.jsonl"
    code, out, err = _stop_when(tmp_path, args, lambda: log.exists(), signal.SIGTERM)
    assert code == 0, err[-3000:]
    assert "240 training examples make 8 steps per epoch: training 63 epochs (504 steps" in out
    assert "stopped by SIGTERM: saved seed 0" in out and "Traceback" not in err
    assert not (tmp_path / "ft" / "results.json").exists()

    resumed = _cli(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "seed 0: resuming from step " in resumed.stdout
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["median"]["dev/accuracy"] > majority + 0.05, (results["median"], majority)
    steps = [r["step"] for r in map(json.loads, log.read_text().splitlines()) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 504  # each logged once

    # a rerun of the finished run reads it back; another run into the same workdir is refused (in this
    # process: no training left to run, so no new process is worth its start-up)
    from electra_jax.cli import main

    finished = _md5(tmp_path / "ft" / "results.json")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(args) == 0
    assert "seed 0: finished earlier" in capsys.readouterr().out
    assert main([*args, "--config.optim.learning_rate=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "delete" in err
    assert "holds a fine-tuning run with other settings or data (optim.learning_rate: 0.001 there, 0.01 now)" in err
    assert _md5(tmp_path / "ft" / "results.json") == finished

    assert main(["export", "--workdir", "ft", "--out", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "ElectraForSequenceClassification"]


def test_a_malformed_csv_is_refused_with_file_and_line_or_its_bad_rows_skipped(random_discriminator, tmp_path,
                                                                               capsys):
    """Issue 31.2: an unclosed quote swallowed lines and made a class of them (exit 0), and a row with
    too many fields made a class of its second field."""
    from electra_jax.cli import main
    from electra_jax.finetune.tasks import read_table, task_spec

    _lord_or_other(tmp_path / "good.csv", 300)
    lines = (tmp_path / "good.csv").read_text().splitlines()
    unclosed = lines[:10] + ['"provided that you comply with the terms,lord'] + lines[10:20] + \
        ['the end of the quote",other'] + lines[20:]
    (tmp_path / "unclosed.csv").write_text("\n".join(unclosed) + "\n")
    (tmp_path / "fields.csv").write_text("\n".join(lines[:5] + ["a,b,c,license"] + lines[5:]) + "\n")
    (tmp_path / "stray.csv").write_text("\n".join(lines + ["a stray line,provided that you comply with"]) + "\n")
    # an unclosed quote is either closed later by another quote (a strict-CSV error) or swallows rows
    expected = {"unclosed.csv": "line 11: ",
                "fields.csv": "line 6: 4 fields, the header has 2",
                "stray.csv": "line 302: label 'provided that you comply with' appears once in 301 rows"}
    for name, message in expected.items():
        capsys.readouterr()
        assert main(["finetune", "--init", random_discriminator, "--task", "classification", "--train",
                     str(tmp_path / name), "--dev", str(tmp_path / "good.csv"), "--workdir", str(tmp_path / "w"),
                     "--config.task.text_a=text"]) == 2, name
        err = capsys.readouterr().err
        assert f"{tmp_path / name}: 1 bad row(s) ({message}" in err and err.count("\n") == 1, err
        assert "an unclosed quote?" in err or name != "unclosed.csv", err
        assert "--config.task.skip_bad_rows=True" in err and not (tmp_path / "w" / "results.json").exists()
        skipped = read_table(str(tmp_path / name), task_spec("classification", "text"), skip_bad_rows=True)
        assert set(skipped.labels) == {"lord", "other"}
        assert len(skipped.labels) == 300 if name != "unclosed.csv" else 280 < len(skipped.labels) < 300
        assert f"{tmp_path / name}: skipped 1 bad row(s)" in capsys.readouterr().out
