"""A real multi-process run on this machine: 2 processes x 4 CPU devices joined by
jax.distributed (gloo collectives) equal 1 process x 8 devices fed the same global batches; one
checkpoint is written cooperatively, and a 1-process run resumes from it."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from electra_jax.config import load_config
from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
from electra_jax.data.builder import BuildArgs, build
from electra_jax.data.reader import host_files, train_dataset
from electra_jax.train import setup

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "kjv64"
    build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=str(data), inputs=[SAMPLE_CORPUS], seq_len=64,
                    shards=4, progress=False))
    workdir = tmp_path_factory.mktemp("run")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
                                      "--xla_backend_optimization_level=1", "JAX_PLATFORMS": "cpu"}
    common = [sys.executable, "-m", "electra_jax.cli", "pretrain", "--config", str(ROOT / "configs" / "tiny.py"),
              "--workdir", str(workdir), "--data", str(data), f"--config.num_train_steps={STEPS}",
              f"--config.train.save_every={STEPS}", "--config.train.eval_every=0", "--config.train.log_every=2",
              "--config.data.shuffle_buffer=64", "--coordinator", f"localhost:{port}", "--num-processes", "2",
              "--cpu-collectives", "--distributed-timeout", "120"]
    procs = [subprocess.Popen(common + ["--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return str(data), workdir


def test_two_processes_equal_one_process_with_the_same_batches(two_process_run):
    data, workdir = two_process_run
    # Each process read its own half of the shards.
    halves = [set(host_files(data, "train", i, 2)) for i in range(2)]
    assert halves[0] and halves[1] and not halves[0] & halves[1]
    # One checkpoint, written once, with both hosts' reader positions beside it.
    assert list(ocp.CheckpointManager(str(workdir / "checkpoints")).all_steps()) == [STEPS]
    assert sorted(os.listdir(workdir / "data_state" / str(STEPS))) == [
        "host-0.data-00000-of-00001", "host-0.index", "host-1.data-00000-of-00001", "host-1.index"]

    # Reference: one process, 8 devices, each global batch = host 0's rows then host 1's.
    config = load_config(str(ROOT / "configs" / "tiny.py"), ["--config.data.shuffle_buffer=64",
                                                             f"--config.num_train_steps={STEPS}"])
    s = setup(config, jax.devices())
    init_rng, train_rng = s.rngs()
    state = s.init(init_rng)
    hosts = [train_dataset(data, config.batch_size, config.seed, process_index=i, process_count=2,
                           shuffle_buffer=64).as_numpy_iterator() for i in range(2)]
    for _ in range(STEPS):
        parts = [next(h) for h in hosts]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, _ = s.step(state, jax.device_put(batch, s.batch_sharding), train_rng)
    restored = ocp.CheckpointManager(str(workdir / "checkpoints")).restore(
        STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore(s.abstract_state())))["state"]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(restored.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_one_process_resumes_a_two_process_checkpoint(two_process_run):
    from electra_jax.pretrain import pretrain

    data, workdir = two_process_run
    config = load_config(str(ROOT / "configs" / "tiny.py"), [
        f"--config.data.path={data}", f"--config.num_train_steps={STEPS + 2}", "--config.train.eval_every=0",
        "--config.train.log_every=1", "--config.data.shuffle_buffer=64", "--config.train.async_checkpoints=False"])
    result = pretrain(config, str(workdir), devices=jax.devices(), progress=False)
    assert result["step"] == STEPS + 2 and np.isfinite(result["train"]["loss"])


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    port = _free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "pretrain", "--config",
                          str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path), "--coordinator",
                          f"localhost:{port}", "--num-processes", "2", "--process-id", "1",
                          "--distributed-timeout", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert f"could not reach the coordinator localhost:{port} within 2 s" in out.stderr
