"""What a new user types: the CLI from a fresh working directory with relative paths and preset
names, through pretrain -> SIGTERM -> resume -> export -> detect -> finetune -> import -> export; and
the outcomes of their mistakes (exit code, one line, no traceback, nothing in the workdir changed)."""

import csv
import gzip
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
from safetensors.numpy import load_file

from electra_jax.checkpoint import CheckpointError
from electra_jax.config import load_config
from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
from electra_jax.data.builder import BuildArgs, DataError, build
from electra_jax.pretrain import TrainingError, pretrain

# One CPU device and fast compiles for the children; nothing else from the test process.
CHILD_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1"}


def _cli(cwd, *args, check=True):
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", *args], cwd=cwd, env=CHILD_ENV,
                         capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"{args}: {out.stderr[-3000:]}"
    return out


def _files(root) -> dict[str, bytes]:
    """Every file under root with its bytes: a workdir's whole observable state."""
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


def _write_tsv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(("text", "label"))
        writer.writerows(rows)


@pytest.mark.slow
def test_relative_paths_and_presets_through_the_whole_cli(tmp_path):
    """From a directory without configs/, every path relative, as typed in a shell."""
    cwd = tmp_path / "home"
    cwd.mkdir()
    _cli(cwd, "build-data", "--out", "data", "--seq-len", "64", "--shards", "2", "--workers", "1",
         "--eval-fraction", "0.02")
    assert (cwd / "data" / "manifest.json").exists()

    # pretrain, stopped by SIGTERM (what a TPU maintenance event or Slurm sends)
    run = ["pretrain", "--config", "tiny", "--workdir", "runs/tiny", "--data", "data",
           "--config.train.log_every=1", "--config.train.eval_every=0"]
    child = subprocess.Popen([sys.executable, "-m", "electra_jax.cli", *run,
                              "--config.num_train_steps=100000", "--config.train.save_every=100000"],
                             cwd=cwd, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = cwd / "runs" / "tiny" / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-3000:]
    assert "starting from scratch" in out
    saved = ocp.CheckpointManager(str(cwd / "runs" / "tiny" / "checkpoints")).all_steps()
    assert len(saved) == 1 and f"saved step {saved[0]}" in out + err
    assert "Traceback" not in err

    # the same command resumes, says so, and logs each step once
    resumed = _cli(cwd, *run, f"--config.num_train_steps={saved[0] + 2}")
    assert f"resuming from step {saved[0]} (checkpoint {cwd}/runs/tiny/checkpoints/{saved[0]})" in resumed.stdout
    steps = [r["step"] for r in map(json.loads, log.read_text().splitlines()) if r["split"] == "train"]
    assert steps == list(range(1, saved[0] + 3))

    _cli(cwd, "export", "--workdir", "runs/tiny", "--out", "hf")
    detected = _cli(cwd, "detect", "--model", "hf/discriminator", "the", "lord", "said")
    assert detected.stdout.splitlines()[0].split() == ["token", "p(replaced)"]
    assert [line.split()[0] for line in detected.stdout.splitlines()[1:]] == ["[CLS]", "the", "lord", "said",
                                                                              "[SEP]"]
    from_workdir = _cli(cwd, "detect", "--model", "runs/tiny", "the", "lord", "said", "--json")
    from_export = _cli(cwd, "detect", "--model", "hf/discriminator", "the", "lord", "said", "--json")
    assert json.loads(from_workdir.stdout) == json.loads(from_export.stdout)

    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        lines = [line.strip() for line, _ in zip(f, range(3000)) if len(line.split()) > 4][:240]
    rows = [(s, "lord" if " lord" in s.lower() else "other") for s in lines]
    _write_tsv(cwd / "train.tsv", rows[:200])
    _write_tsv(cwd / "dev.tsv", rows[200:])
    _cli(cwd, "finetune", "--init", f"runs/tiny:{saved[0]}", "--task", "classification", "--train",
         "train.tsv", "--dev", "dev.tsv", "--workdir", "ft/mine", "--config.num_epochs=1",
         "--config.head=hf", "--config.task.text_a=text", "--config.task.max_len=32")
    _cli(cwd, "export", "--workdir", "ft/mine", "--out", "ft/hf")
    assert json.loads((cwd / "ft" / "hf" / "config.json").read_text())["architectures"] == [
        "ElectraForSequenceClassification"]

    # import a published-layout pair with the default preset (base: seq_len 512 > the pair's 128
    # positions), then export it again with nothing in between
    imported = _cli(cwd, "import", "--discriminator", "hf/discriminator", "--generator", "hf/generator",
                    "--workdir", "imported")
    assert "data.seq_len 512 -> 128" in imported.stdout
    _cli(cwd, "export", "--workdir", "imported", "--out", "reexported")
    for tower in ("discriminator", "generator"):
        before = load_file(cwd / "hf" / tower / "model.safetensors")
        after = load_file(cwd / "reexported" / tower / "model.safetensors")
        assert before.keys() == after.keys()
        for name in before:
            np.testing.assert_array_equal(after[name], before[name], err_msg=f"{tower} {name}")
        assert (cwd / "reexported" / tower / "tokenizer.json").read_text() == (
            cwd / "hf" / tower / "tokenizer.json").read_text()


@pytest.fixture
def data_dir(kjv64):
    return kjv64


def _config(data_dir, *overrides):
    return load_config("tiny", [f"--config.data.path={data_dir}", "--config.num_train_steps=8",
                                "--config.train.log_every=1", "--config.train.eval_every=0",
                                "--config.data.shuffle_buffer=256", *overrides])


def test_a_failed_async_save_stops_the_run_naming_step_and_path(data_dir, tmp_path, monkeypatch):
    """The user's failure, reproduced in orbax's own save thread: a relative checkpoint path under
    orbax 0.12 (resolution switched off here). The run must stop, not train on to the next save."""
    import electra_jax.checkpoint as checkpoint_lib

    monkeypatch.setattr(checkpoint_lib, "resolve", lambda path: path)
    monkeypatch.chdir(tmp_path)
    config = _config(data_dir, "--config.num_train_steps=1000", "--config.train.save_every=10")
    with pytest.raises(CheckpointError, match=r"saving step 10 to w/checkpoints/10 failed: ValueError: "
                                              r"Checkpoint path should be absolute.*latest complete "
                                              r"checkpoint is step None"):
        pretrain(config, "w", devices=jax.devices()[:1], progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert 10 <= max(steps) < 20  # stopped before the next save, not after the whole run


def test_a_refused_run_leaves_the_workdir_as_it_was(data_dir, tmp_path):
    from electra_jax.cli import main

    workdir = tmp_path / "w"
    pretrain(_config(data_dir, "--config.num_train_steps=2", "--config.train.async_checkpoints=False"),
             str(workdir), devices=jax.devices()[:1], progress=False)
    before = _files(workdir)
    with pytest.raises(TrainingError, match="holds a checkpoint of a different model"):
        pretrain(_config(data_dir, "--config.model.hidden_size=32", "--config.model.embedding_size=32"),
                 str(workdir), devices=jax.devices()[:1], progress=False)
    assert _files(workdir) == before
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 0


def test_a_failed_build_leaves_nothing_that_looks_like_data(tmp_path):
    text, binary = tmp_path / "a.txt", tmp_path / "b.bin"
    text.write_text("in the beginning\nwas the word\n\nand the word was\n")
    binary.write_bytes(b"\x00\x01\x02" * 100)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"b.bin: looks binary"):
        build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=str(out), inputs=[str(text), str(binary)],
                        progress=False))
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.slow
def test_a_rerun_says_where_it_starts_and_logs_each_step_once(data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    config = lambda: _config(data_dir, "--config.train.save_every=4", "--config.train.async_checkpoints=False")
    pretrain(config(), str(workdir), max_steps=6, devices=jax.devices()[:1], progress=False)
    assert f"starting from scratch (no checkpoint in {workdir}/checkpoints)" in capsys.readouterr().out
    # a crash after step 6 was logged but before it was saved: only step 4 is on disk
    ocp.CheckpointManager(str(workdir / "checkpoints")).delete(6)
    pretrain(config(), str(workdir), devices=jax.devices()[:1], progress=False)
    assert f"resuming from step 4 (checkpoint {workdir}/checkpoints/4)" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_user_mistakes_get_one_line_and_exit_2(data_dir, tmp_path, capsys):
    from electra_jax.cli import main

    workdir = tmp_path / "w"
    pretrain(_config(data_dir, "--config.num_train_steps=1", "--config.train.async_checkpoints=False"),
             str(workdir), devices=jax.devices()[:1], progress=False)
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    cases = [
        (["detect", "--model", "/nonexistent", "hi"], "/nonexistent: no such file or directory"),
        (["detect", "--model", str(tmp_path / "hf" / "generator"), "hi"],
         f"is an ELECTRA generator (ElectraForMaskedLM); use the discriminator (an export writes it beside "
         f"the generator: {tmp_path / 'hf' / 'discriminator'})"),
        (["pretrain", "--config", "tiny", "--workdir", str(tmp_path / "x"), "--data", "/missing"],
         "/missing: no such directory; make it with `electra-jax build-data --out /missing`"),
        (["pretrain", "--config", "tinny", "--workdir", str(tmp_path / "x")],
         "--config 'tinny': no such file"),
        (["export", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], "no config.json"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    assert main(["detect", "--model", str(workdir), "hi"]) == 0  # a pretrain workdir is accepted
    assert not (tmp_path / "x").exists()


def test_help_shows_defaults_and_every_flag_has_help():
    from electra_jax.cli import _parser

    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    text = commands["pretrain"].format_help()
    assert "--config.<field>=<value>" in text and "(default: None)" in text
    assert "(default: 0.005)" in commands["build-data"].format_help()
    version = subprocess.run([sys.executable, "-m", "electra_jax.cli", "--version"], capture_output=True,
                             text=True, env=CHILD_ENV)
    assert version.returncode == 0 and version.stdout.startswith("electra-jax ")


def test_no_tensorflow_start_up_lines_on_stderr(tmp_path):
    out = _cli(tmp_path, "build-data", "--out", "d", "--seq-len", "32", "--shards", "1", "--workers", "1",
               "--eval-fraction", "0")
    assert out.stderr == "", out.stderr
    assert out.stdout.startswith(f"{tmp_path}/d: train: ")
