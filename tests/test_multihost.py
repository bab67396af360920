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


FAKE_SRUN = """#!/usr/bin/env bash
# A fake srun: the job step's tasks as local processes with Slurm's per-task variables.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i "$@" > "$SRUN_LOGS/task-$i.log" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
"""


def _slurm_job_id_with_free_port() -> int:
    """A job id whose coordinator port (JAX: 61440 + id % 4096) is free here."""
    for job_id in range(1000, 5096):
        with socket.socket() as s:
            try:
                s.bind(("localhost", 61440 + job_id % 4096))
            except OSError:
                continue
            return job_id
    raise RuntimeError("no free port in Slurm's range")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """launch/slurm.sbatch as a 2-node job (a fake srun; 4 CPU devices per node, 4 "GPUs" per node
    that electra-jax hands to jax.distributed): JAX's own Slurm detection joins the two tasks."""
    data = tmp_path_factory.mktemp("data") / "kjv64"
    build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=str(data), inputs=[SAMPLE_CORPUS], seq_len=64,
                    shards=4, progress=False))
    workdir = tmp_path_factory.mktemp("run")
    fake = tmp_path_factory.mktemp("slurm")
    (fake / "srun").write_text(FAKE_SRUN)
    (fake / "srun").chmod(0o755)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1",
           "JAX_PLATFORMS": "cpu", "PATH": f"{fake}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "CONFIG": "tiny", "DATA": str(data), "WORKDIR": str(workdir), "SRUN_LOGS": str(fake),
           "SLURM_JOB_ID": str(_slurm_job_id_with_free_port()), "SLURM_STEP_NODELIST": "localhost",
           "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    job = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), f"--config.num_train_steps={STEPS}",
                          f"--config.train.save_every={STEPS}", "--config.train.eval_every=0",
                          "--config.train.log_every=2", "--config.data.shuffle_buffer=64", "--cpu-collectives",
                          "--distributed-timeout", "120"], env=env, capture_output=True, text=True, timeout=600)
    logs = [(fake / f"task-{i}.log").read_text() for i in range(2)]
    assert job.returncode == 0, job.stderr + "\n".join(logs)
    assert "2 process(es) x 4 cpu device(s); mesh {'data': 1, 'fsdp': 8" in logs[0]  # FSDP, the default
    return str(data), workdir


@pytest.mark.slow
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


@pytest.mark.slow
def test_one_process_resumes_a_two_process_checkpoint(two_process_run, monkeypatch):
    """The resumed run starts from exactly the saved state (not a fresh one), at the next step."""
    import dataclasses
    import json

    from electra_jax import pretrain as pretrain_lib

    data, workdir = two_process_run
    _, saved_step, saved = pretrain_lib.restore_params(str(workdir))  # what the two processes wrote
    assert saved_step == STEPS
    started = {}
    build = pretrain_lib.setup

    def recording_setup(*args, **kwargs):  # the state handed to the first train step, before donation
        s = build(*args, **kwargs)
        return dataclasses.replace(s, step=lambda state, *a: (
            started.setdefault("state", jax.device_get(state)), s.step(state, *a))[1])

    monkeypatch.setattr(pretrain_lib, "setup", recording_setup)
    config = load_config(str(ROOT / "configs" / "tiny.py"), [
        f"--config.data.path={data}", f"--config.num_train_steps={STEPS + 2}", "--config.train.eval_every=0",
        "--config.train.log_every=1", "--config.data.shuffle_buffer=64", "--config.train.async_checkpoints=False"])
    result = pretrain_lib.pretrain(config, str(workdir), devices=jax.devices(), progress=False)
    assert result["step"] == STEPS + 2 and np.isfinite(result["train"]["loss"])
    assert int(started["state"].step) == STEPS
    for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(started["state"].params),
                                    jax.tree.leaves(saved)):
        np.testing.assert_array_equal(ours, theirs, err_msg=jax.tree_util.keystr(path))
    with open(workdir / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
    assert steps == [2, 4, 5, 6]  # the two processes' (every 2nd), then this run's (every step), none twice


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    port = _free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "pretrain", "--config",
                          str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path), "--coordinator",
                          f"localhost:{port}", "--num-processes", "2", "--process-id", "1",
                          "--distributed-timeout", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert f"could not reach the coordinator localhost:{port} within 2 s" in out.stderr


def test_when_processes_are_joined():
    """distributed.plan: which jax.distributed.initialize arguments each environment gets."""
    from electra_jax.distributed import DistributedError, on_cloud_tpu_vm, plan

    assert plan({}, on_tpu_vm=False) is None  # one process anywhere else
    # Cloud TPU VM: always, one host or many (JAX asks the metadata server), and with no
    # TPU_WORKER_HOSTNAMES, which gcloud-made VMs do not set.
    assert plan({}, on_tpu_vm=True) == {}
    assert on_cloud_tpu_vm({"TPU_WORKER_HOSTNAMES": "a,b"}, paths=lambda _: [])  # GKE
    assert not on_cloud_tpu_vm({}, paths=lambda _: [])
    # Slurm: one task alone, nothing; one task per node gets all of its node's GPUs; one per GPU, JAX's default.
    assert plan({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, on_tpu_vm=False) is None
    per_node = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2"}
    assert plan({**per_node, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, on_tpu_vm=False) == {
        "local_device_ids": [0, 1, 2, 3, 4, 5, 6, 7]}
    assert plan({**per_node, "SLURM_GPUS_ON_NODE": "4"}, on_tpu_vm=False) == {"local_device_ids": [0, 1, 2, 3]}
    assert plan(per_node, on_tpu_vm=False) == {}  # CPU nodes
    per_gpu = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "CUDA_VISIBLE_DEVICES": "3"}
    assert plan(per_gpu, on_tpu_vm=False) == {}
    # Explicit flags, or the same as JAX_* variables (flags win), on any machine.
    explicit = {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert plan({}, "h:1", 2, 1, on_tpu_vm=True) == explicit
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert plan(env, on_tpu_vm=False) == {**explicit, "process_id": 0}
    assert plan(env, process_id=1, on_tpu_vm=False) == explicit
    assert plan({}, "h:1", 1, 0, on_tpu_vm=False) is None
    with pytest.raises(DistributedError, match="give all of"):
        plan({}, "h:1", on_tpu_vm=False)
    with pytest.raises(DistributedError, match="outside 0..1"):
        plan({}, "h:1", 2, 2, on_tpu_vm=False)
