"""The pretraining loop: exact resume, checkpoint compatibility, data checks."""

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

from conftest import ROOT
from electra_jax.config import load_config
from electra_jax.data.builder import DataError
from electra_jax.pretrain import TrainingError, pretrain


@pytest.fixture
def data_dir(kjv64):
    return kjv64


def _config(data_dir, *overrides):
    return load_config(str(ROOT / "configs" / "tiny.py"), [
        f"--config.data.path={data_dir}", "--config.num_train_steps=8", "--config.train.log_every=2",
        "--config.train.save_every=4", "--config.train.eval_every=4", "--config.train.eval_batches=2",
        "--config.train.async_checkpoints=False", "--config.data.shuffle_buffer=256", *overrides])


def _params(workdir, step):
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"]["params"])


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_straight_run(data_dir, tmp_path):
    one = jax.devices()[:1]
    straight = pretrain(_config(data_dir, "--config.train.profile_steps=2"), str(tmp_path / "a"),
                        devices=one, progress=False)
    first = pretrain(_config(data_dir), str(tmp_path / "b"), max_steps=3, devices=one, progress=False)
    assert first["step"] == 3
    resumed = pretrain(_config(data_dir), str(tmp_path / "b"), devices=one, progress=False)
    assert resumed["step"] == straight["step"] == 8
    for a, b in zip(jax.tree.leaves(_params(tmp_path / "a", 8)), jax.tree.leaves(_params(tmp_path / "b", 8))):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU
    timing = ("tokens_per_s", "step_time_s", "mfu")
    drop = lambda m: {k: v for k, v in m.items() if k not in timing}
    assert drop(resumed["train"]) == drop(straight["train"])
    assert resumed["eval"] == straight["eval"]
    assert 0.0 <= straight["eval"]["disc_auc"] <= 1.0
    _check_logs(tmp_path / "a")


def _check_logs(workdir):
    """metrics.jsonl, TensorBoard events, the profile and `electra-jax plot` of a finished 8-step run."""
    import json

    import tensorflow as tf

    from electra_jax.cli import main

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]
    evals = [r for r in records if r["split"] == "eval"]
    for name in ("loss", "learning_rate", "grad_norm", "param_norm", "tokens_per_s", "step_time_s"):
        assert name in train[-1], name
    assert {"masked_lm_accuracy", "disc_auc", "disc_precision"} <= set(evals[-1])
    np.testing.assert_allclose(train[0]["learning_rate"], 1e-3 * (1 - 1 / 8) * (1 / 20), rtol=1e-5)

    tags = {}
    for split in ("train", "eval"):
        for path in tf.io.gfile.glob(str(workdir / "tensorboard" / split / "events.out.tfevents.*")):
            for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
                event = tf.compat.v1.Event.FromString(raw)
                for v in event.summary.value:
                    tags.setdefault((split, v.tag), []).append(event.step)
    assert tags[("train", "loss")] == [2, 4, 6, 8] and tags[("eval", "disc_auc")] == [4, 8]
    assert ("train", "tokens_per_s") in tags and ("train", "learning_rate") in tags
    assert list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))

    assert main(["plot", str(workdir)]) == 0
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_of_another_model_and_mismatched_data_are_refused(data_dir, tmp_path):
    one = jax.devices()[:1]
    pretrain(_config(data_dir, "--config.num_train_steps=2"), str(tmp_path / "w"), devices=one,
             progress=False)
    with pytest.raises(TrainingError, match=r"different model \(hidden_size: checkpoint 64, config 32"):
        pretrain(_config(data_dir, "--config.model.hidden_size=32", "--config.model.embedding_size=32"),
                 str(tmp_path / "w"), devices=one, progress=False)
    with pytest.raises(TrainingError, match="tokens.mask_id=103 \\(data: 4\\)"):
        pretrain(_config(data_dir, "--config.tokens.mask_id=103"), str(tmp_path / "x"), devices=one,
                 progress=False)
    with pytest.raises(DataError, match="no training data: pass --data DIR"):
        pretrain(_config("", ), str(tmp_path / "y"), devices=one, progress=False)


def _start_pretrain(workdir, data_dir, *overrides, stdout=subprocess.PIPE):
    """`electra-jax pretrain` of the tiny config in a child process that would run for a long time."""
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1"}
    return subprocess.Popen(
        [sys.executable, "-m", "electra_jax.cli", "pretrain", "--config", str(ROOT / "configs" / "tiny.py"),
         "--workdir", str(workdir), "--data", data_dir, "--config.num_train_steps=100000",
         "--config.train.eval_every=0", *overrides],
        env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_the_current_step_and_exits_0(data_dir, tmp_path):
    workdir = tmp_path / "w"
    proc = _start_pretrain(workdir, data_dir, "--config.train.log_every=1", "--config.train.save_every=100000")
    log = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = ocp.CheckpointManager(str(workdir / "checkpoints")).all_steps()
    assert len(steps) == 1 and 3 <= steps[0] < 100000
    assert f"saved step {steps[0]}" in out + err


@pytest.mark.slow
def test_export_loads_in_transformers_with_equal_logits(data_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.model import Electra
    from electra_jax.pretrain import restore_params

    workdir = tmp_path / "w"
    pretrain(_config(data_dir, "--config.num_train_steps=4"), str(workdir), devices=jax.devices()[:1],
             progress=False)
    run = [sys.executable, "-m", "electra_jax.cli", "export", "--workdir", str(workdir), "--out"]
    missing = subprocess.run(run + [str(tmp_path / "x"), "--step", "3"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no checkpoint at step 3; there are [4]" in missing.stderr
    done = subprocess.run(run + [str(tmp_path / "hf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    config, _, params = restore_params(str(workdir))
    from electra_jax.config import model_spec

    model = Electra(model_spec(config))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf" / "discriminator"))
    enc = tok(["In the beginning God created the heaven and the earth.",
               "And the evening and the morning were the first day."], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    seg = enc["token_type_ids"].astype(np.int32)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    ours = {"discriminator": model.apply({"params": params}, ids, seg, mask,
                                         method=Electra.discriminator_logits),
            "generator": model.apply({"params": params}, ids, seg, mask, positions,
                                     method=Electra.generator_logits)}
    for tower, cls in (("discriminator", transformers.ElectraForPreTraining),
                       ("generator", transformers.ElectraForMaskedLM)):
        hf, info = cls.from_pretrained(str(tmp_path / "hf" / tower), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                        token_type_ids=torch.tensor(seg).long()).logits.numpy()
        real = mask.astype(bool)
        np.testing.assert_allclose(np.asarray(ours[tower])[real], logits[real], atol=1e-5, rtol=1e-5)
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf" / "generator"))
    assert len(fill("In the beginning God created the [MASK].")) == 5
    _check_import(tmp_path, data_dir, params, capsys)


def _check_import(tmp_path, data_dir, params, capsys):
    """HF export -> import gives back the same parameters, pretraining continues from it, and a
    discriminator whose config disagrees with its weights is refused naming the tensors."""
    import json
    import shutil

    from electra_jax.cli import main
    from electra_jax.hf import HFFormatError
    from electra_jax.pretrain import import_hf, restore_params

    hf = tmp_path / "hf"
    tiny = str(ROOT / "configs" / "tiny.py")
    args = ["import", "--discriminator", str(hf / "discriminator"), "--generator", str(hf / "generator"),
            "--config", tiny]
    assert main(args + ["--workdir", str(tmp_path / "imported")]) == 0
    _, step, imported = restore_params(str(tmp_path / "imported"))
    assert step == 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(imported)):
        np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))
    resumed = pretrain(_config(data_dir, "--config.num_train_steps=2"), str(tmp_path / "imported"),
                       devices=jax.devices()[:1], progress=False)
    assert resumed["step"] == 2
    assert main(args + ["--workdir", str(tmp_path / "imported")]) == 2  # not over a run

    # WORKDIR:step names a checkpoint (detect, finetune --init); a missing step says which exist.
    capsys.readouterr()
    assert main(["detect", "--model", f"{tmp_path / 'w'}:4", "--json", "And God said"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["detect", "--model", f"{tmp_path / 'w'}:3", "And God said"]) == 2
    assert "no checkpoint at step 3; there are [4]" in capsys.readouterr().err

    # Under another preset the model fields come from the pair, and the command prints the overrides;
    # a generator whose embedding tables differ is imported with the discriminator's, and says so.
    from safetensors.numpy import load_file, save_file

    odd = tmp_path / "odd_generator"
    shutil.copytree(hf / "generator", odd)
    weights = load_file(str(odd / "model.safetensors"))
    weights["electra.embeddings.word_embeddings.weight"] += 1.0
    save_file(weights, str(odd / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["import", "--discriminator", str(hf / "discriminator"), "--generator", str(odd), "--config",
                 "small", "--workdir", str(tmp_path / "imported2")]) == 0
    out = capsys.readouterr().out
    assert "--config.model.hidden_size=64" in out and "--config.model.num_layers=2" in out
    assert "the generator's embedding tables differ from the discriminator's" in out
    _, _, imported2 = restore_params(str(tmp_path / "imported2"))
    np.testing.assert_array_equal(imported2["embeddings"]["word_embeddings"], params["embeddings"]["word_embeddings"])

    bad = tmp_path / "bad"
    shutil.copytree(hf / "discriminator", bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 512}))
    with pytest.raises(HFFormatError, match=r"tensors have the wrong shape: .*intermediate.dense.weight "
                                            r"\(256, 64\), expected \(512, 64\)"):
        import_hf(str(bad), str(hf / "generator"), str(tmp_path / "never"), _config(data_dir))


@pytest.mark.slow
def test_demo_runs_end_to_end_in_short_form(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=1"}
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "demo", "--workdir", str(tmp_path),
                          "--config.num_train_steps=20",  # the default preset: demo
                          "--config.train.eval_every=20", "--config.train.eval_batches=2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4/4 electra-jax detect" in out.stdout and "light" in out.stdout
    assert (tmp_path / "export" / "discriminator" / "model.safetensors").exists()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"]["temperature"] == 2.0 and saved["model"]["hidden_size"] == 64


@pytest.mark.slow
def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    # Warm-up makes step 0's learning rate 0; the next update (lr ~1e37) overflows the parameters.
    config = _config(data_dir, "--config.optim.learning_rate=1e38", "--config.optim.warmup_steps=4",
                     "--config.train.save_every=1", "--config.train.log_every=1")
    with pytest.raises(TrainingError, match=r"not finite at step (\d+).*the last good checkpoint is step 1\b"):
        pretrain(config, str(tmp_path), devices=jax.devices()[:1], progress=False)
    steps = ocp.CheckpointManager(str(tmp_path / "checkpoints")).all_steps()
    assert list(steps) == [1]
    with open(tmp_path / "metrics.jsonl") as f:  # skip_nonfinite=0: no skipping, nothing counted
        assert all("skipped_steps" not in line for line in f)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(tmp_path, 1)))


@pytest.mark.slow
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_usable(data_dir, tmp_path):
    workdir = tmp_path / "w"
    proc = _start_pretrain(workdir, data_dir, "--config.train.save_every=1",
                           "--config.train.keep_checkpoints=100000", stdout=subprocess.DEVNULL)
    checkpoints, killed_mid_save = workdir / "checkpoints", False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        names = os.listdir(checkpoints) if checkpoints.exists() else []
        if sum(n.isdigit() for n in names) >= 3 and any("tmp" in n for n in names):
            proc.send_signal(signal.SIGKILL)  # while orbax is writing a step
            killed_mid_save = True
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_mid_save, proc.stderr.read()[-2000:]

    steps = ocp.CheckpointManager(str(checkpoints)).all_steps()
    assert steps and all(str(s) in os.listdir(checkpoints) for s in steps)
    last = max(steps)
    resumed = pretrain(_config(data_dir, f"--config.num_train_steps={last + 2}"), str(workdir),
                       devices=jax.devices()[:1], progress=False)
    assert resumed["step"] == last + 2  # resumed from the last committed step, not from scratch


def test_unwritable_or_full_workdir_is_refused_before_training(data_dir, tmp_path, monkeypatch):
    import collections
    import shutil

    from electra_jax.fs import PathError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PathError, match="cannot write to --workdir"):
        pretrain(_config(data_dir), str(blocker / "run"), devices=jax.devices()[:1], progress=False)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TrainingError, match=r"has 0.00 GiB free but one checkpoint needs"):
        pretrain(_config(data_dir), str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_workdir_files_go_through_gfile():
    """config.json, metrics.jsonl and TensorBoard use tf.io.gfile: an in-memory filesystem stands in
    for gs:// here (same code path, no network)."""
    from electra_jax.config import load_workdir_config
    from electra_jax.pretrain import check_workdir, write_config
    from electra_jax.fs import host_tf
    from electra_jax.writers import MetricWriter, plot, read_metrics

    workdir = "ram://electra-test/run"
    check_workdir(workdir, 10**15)  # remote: a write probe, no local disk-size check
    write_config(load_config(str(ROOT / "configs" / "tiny.py")), workdir)
    assert load_workdir_config(workdir).model.hidden_size == 64
    writer = MetricWriter(workdir)
    writer.write(1, "train", {"loss": 1.0})
    writer.write(2, "train", {"loss": 0.5})
    writer.close()
    assert [r["loss"] for r in read_metrics(workdir)] == [1.0, 0.5]
    png = plot(workdir)
    with host_tf().io.gfile.GFile(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_draws_each_batch_its_own_fixed_key(data_dir, monkeypatch):
    """Every eval batch gets its own key (no two batches share masks), the same at every evaluation."""
    import electra_jax.pretrain as pretrain_lib
    from electra_jax.train import setup

    config = _config(data_dir, "--config.train.eval_batches=3")
    evaluator = pretrain_lib._Evaluator(setup(config, jax.devices()[:1]), config)
    keys = []

    def record(params, batch, rng):
        keys.append(np.asarray(jax.random.key_data(rng)))
        return {"n": np.ones(())}

    evaluator.step = record
    monkeypatch.setattr(pretrain_lib, "eval_metrics", lambda total: total)
    evaluator(None)
    evaluator(None)
    first, second = keys[:3], keys[3:]
    assert len(keys) == 6 and all((a == b).all() for a, b in zip(first, second))
    assert len({k.tobytes() for k in first}) == 3


def test_keeps_the_last_checkpoints(data_dir, tmp_path):
    """keep_checkpoints=2 with a save every step keeps the last two, and their reader positions only."""
    config = _config(data_dir, "--config.num_train_steps=6", "--config.train.save_every=1",
                     "--config.train.keep_checkpoints=2", "--config.train.log_every=1", "--config.train.eval_every=0")
    pretrain(config, str(tmp_path), devices=jax.devices()[:1], progress=False)
    assert list(ocp.CheckpointManager(str(tmp_path / "checkpoints")).all_steps()) == [5, 6]
    # The data reader's positions go with them: only the kept steps' remain.
    assert sorted(int(p.name) for p in (tmp_path / "data_state").iterdir()) == [5, 6]


def test_speed_leaves_out_paused_time(tiny_config, monkeypatch):
    """Tokens/s between two log points subtract what the loop paused for (the first step's compilation,
    saves, evals): a fake clock, no wall time. 4 steps in 10 s of which 6 s paused -> 1 s per step."""
    from electra_jax import pretrain as pretrain_lib

    clock = iter([100.0, 110.0])
    monkeypatch.setattr(pretrain_lib.time, "perf_counter", lambda: next(clock))
    speed = pretrain_lib._Speed(tiny_config, 0, 1)
    speed.pause(6.0)
    got = speed.measure(4)
    assert got["step_time_s"] == pytest.approx(1.0)
    assert got["tokens_per_s"] == pytest.approx(16 * 64)  # batch 16 x seq 64 per second


@pytest.mark.slow
def test_skip_nonfinite_skips_inside_the_loop_and_stops_after_too_many(data_dir, tmp_path):
    """optim.skip_nonfinite=2: the first updates (lr 1e15) make the weights huge until the attention
    logits overflow and every gradient is NaN (measured: from step 3). The first two such steps are
    skipped (counted, parameters untouched, checkpoints finite); the third in a row stops the run."""
    import json
    import re

    config = _config(data_dir, "--config.optim.learning_rate=1e15", "--config.optim.warmup_steps=4",
                     "--config.optim.skip_nonfinite=2", "--config.train.save_every=1", "--config.train.log_every=1",
                     "--config.train.eval_every=0")
    with pytest.raises(TrainingError) as error:
        pretrain(config, str(tmp_path), devices=jax.devices()[:1], progress=False)
    stopped, last_good = map(int, re.search(r"not finite at step (\d+).*the last good checkpoint is step (\d+)",
                                            str(error.value)).groups())
    with open(tmp_path / "metrics.jsonl") as f:
        skipped = {r["step"]: r["skipped_steps"] for r in map(json.loads, f) if r["split"] == "train"}
    first = stopped - 2  # the first skipped step
    assert first >= 2 and last_good == stopped - 1
    assert [skipped[s] for s in range(1, stopped)] == [0] * (first - 1) + [1, 2]
    for a, b in zip(jax.tree.leaves(_params(tmp_path, first - 1)), jax.tree.leaves(_params(tmp_path, last_good))):
        assert np.isfinite(b).all()
        np.testing.assert_array_equal(a, b)  # the skipped steps changed nothing


@pytest.mark.slow
def test_a_uniform_generator_pretrains_the_discriminator_alone_and_exports_it(data_dir, tmp_path):
    """objective.uniform_generator end to end: no generator in the checkpoint, the discriminator's
    eval metrics, and an export of the discriminator alone (there is no generator to write)."""
    transformers = pytest.importorskip("transformers")
    workdir = tmp_path / "w"
    result = pretrain(_config(data_dir, "--config.num_train_steps=4", "--config.objective.uniform_generator=True"),
                      str(workdir), devices=jax.devices()[:1], progress=False)
    assert 0.0 <= result["eval"]["disc_auc"] <= 1.0
    assert abs(result["eval"]["masked_lm_loss"] - np.log(2048)) < 1e-4  # zero logits over the vocabulary
    assert sorted(_params(workdir, 4)) == ["discriminator", "embeddings"]
    done = subprocess.run([sys.executable, "-m", "electra_jax.cli", "export", "--workdir", "w", "--out", "hf"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "hf")) == ["discriminator"]
    assert "fakes drawn uniformly" in (tmp_path / "hf" / "discriminator" / "README.md").read_text()
    _, info = transformers.ElectraForPreTraining.from_pretrained(str(tmp_path / "hf" / "discriminator"),
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from electra_jax.pretrain import import_hf

    with pytest.raises(TrainingError, match="uniform_generator"):  # before any file is read
        import_hf("no/discriminator", "no/generator", str(tmp_path / "never"),
                  _config(data_dir, "--config.objective.uniform_generator=True"))
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_mlm_objective_pretrains_exports_and_is_a_fine_tuning_init(data_dir, tmp_path):
    """The BERT baseline end to end: pretrain (no discriminator), export as one full-size
    ElectraForMaskedLM that transformers loads whole and fills masks with, and fine-tuning takes its
    encoder from the workdir and from the export (test_finetune checks that an ELECTRA generator is not)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.finetune.run import load_init

    workdir = tmp_path / "w"
    result = pretrain(_config(data_dir, "--config.num_train_steps=4", "--config.objective.name=mlm"),
                      str(workdir), devices=jax.devices()[:1], progress=False)
    assert sorted(result["eval"]) == ["masked_lm_accuracy", "masked_lm_loss"]
    assert {"loss", "mlm_accuracy", "mlm_loss"} <= result["train"].keys() and "disc_loss" not in result["train"]
    params = _params(workdir, 4)
    assert sorted(params) == ["embeddings", "generator"]
    done = subprocess.run([sys.executable, "-m", "electra_jax.cli", "export", "--workdir", "w", "--out", "hf"],
                          capture_output=True, text=True, cwd=tmp_path)  # relative paths, as users type
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "hf")) == ["mlm"]
    mlm, info = transformers.ElectraForMaskedLM.from_pretrained(str(tmp_path / "hf" / "mlm"),
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (mlm.config.hidden_size, mlm.config.num_attention_heads, mlm.config.num_hidden_layers) == (64, 2, 2)
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf" / "mlm"))
    assert len(fill("In the beginning God created the [MASK].")) == 5

    encoder = params["generator"]["encoder"]
    for source in (str(workdir), str(tmp_path / "hf" / "mlm")):
        fields, _, backbone, _ = load_init(source)
        assert (fields["hidden_size"], fields["num_heads"]) == (64, 2)
        np.testing.assert_allclose(backbone["discriminator"]["encoder"]["layer_1"]["output"]["kernel"],
                                   encoder["layer_1"]["output"]["kernel"], atol=1e-7)
        np.testing.assert_allclose(backbone["embeddings"]["word_embeddings"],
                                   params["embeddings"]["word_embeddings"], atol=1e-7)


def test_a_checkpoint_without_its_reader_position_is_not_resumed(data_dir, tmp_path):
    """A checkpoint whose data-reader position is missing cannot resume the data order exactly: refused
    with the path, not silently restarted from the first batch."""
    import shutil

    from electra_jax.checkpoint import CheckpointError

    config = _config(data_dir, "--config.num_train_steps=4", "--config.train.eval_every=0")
    pretrain(config, str(tmp_path), devices=jax.devices()[:1], progress=False)
    shutil.rmtree(tmp_path / "data_state" / "4")
    with pytest.raises(CheckpointError, match=r"data_state/4/host-0: no data-reader position for step 4"):
        pretrain(_config(data_dir, "--config.train.eval_every=0"), str(tmp_path), devices=jax.devices()[:1],
                 progress=False)
