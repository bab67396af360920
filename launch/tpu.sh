#!/usr/bin/env bash
# electra-jax on a Cloud TPU VM slice (one host or a pod of several): `setup` makes a Python venv on
# every worker and installs the package into it; `train` starts the same command on every worker and
# jax.distributed joins them (JAX finds the slice through the TPU metadata server).
#
#   launch/tpu.sh [--dry-run] ACTION [extra gcloud flags...]
#   ACTION: create | create-queued | setup | train | logs | stop | delete | delete-queued
#
# Required: PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE (v4-32, v5litepod-16, v5p-64, v6e-16, ...).
# For `setup`: REPO, what pip installs on every worker (a git URL such as
# git+https://github.com/you/electra-jax.git, or a path every worker can read).
# For `train`: CONFIG (a preset: tiny, small, small_plus, base, large; or a config file present on
# every worker), DATA and WORKDIR (gs:// paths: every worker must see the same ones).
# Optional: RUNTIME_VERSION (default: the one the Cloud TPU docs give for the accelerator),
# PYTHON_VERSION (3.12), EXTRAS (tpu), TRAIN_ARGS (extra pretrain flags, e.g. "--config.batch_size=1024").
# PLAN=1 (create, create-queued): first compile the run (CONFIG, TRAIN_ARGS' --config.* overrides) for
# ACCELERATOR_TYPE on this machine with `electra-jax plan` (needs the tpu extra here, no TPU), and
# create nothing unless it fits: nobody pays for a slice that cannot hold the run.
# Extra arguments after ACTION go to gcloud, e.g. `create-queued --spot` or `create-queued --reserved`.
# --dry-run prints every command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
ACTION="${1:-}"
shift || true
EXTRA=("$@")

# On every worker, under its $HOME: the venv, the run's log and its pid (expanded there, not here).
# shellcheck disable=SC2016
VENV='$HOME/electra-jax-venv'
# shellcheck disable=SC2016
LOG='$HOME/electra-jax.log'
# shellcheck disable=SC2016
PID='$HOME/electra-jax.pid'

die() {
  echo "launch/tpu.sh: $*" >&2
  exit 2
}

need() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "set $name (see the top of this script)"
  done
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# WORKERS (hosts in the slice) and RUNTIME (the software version the Cloud TPU docs give for it;
# cloud.google.com/tpu/docs/runtimes). v2-v4 and v5p sizes count TensorCores (8 per host), v5e and
# v6e sizes count chips (4 per host beyond a single 8-chip host). Anything else is refused here,
# before any command runs.
accelerator() {
  local kind="${ACCELERATOR_TYPE%-*}" size="${ACCELERATOR_TYPE##*-}"
  [[ "$size" =~ ^[0-9]+$ && "$ACCELERATOR_TYPE" == *-* ]] || die "ACCELERATOR_TYPE $ACCELERATOR_TYPE is not TYPE-SIZE (e.g. v4-32)"
  case "$kind" in
    v2|v3|v4) WORKERS=$(( size > 8 ? size / 8 : 1 )); RUNTIME=tpu-ubuntu2204-base ;;
    v5p) WORKERS=$(( size > 8 ? size / 8 : 1 )); RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod|v5e) WORKERS=$(( size > 8 ? size / 4 : 1 )); RUNTIME=v2-alpha-tpuv5-lite ;;
    v6e) WORKERS=$(( size > 8 ? size / 4 : 1 )); RUNTIME=v2-alpha-tpuv6e ;;
    *) die "unknown ACCELERATOR_TYPE $ACCELERATOR_TYPE (v2/v3/v4/v5p/v5litepod/v6e-SIZE); set RUNTIME_VERSION too for others" ;;
  esac
  RUNTIME="${RUNTIME_VERSION:-$RUNTIME}"
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="$1"
}

need PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
accelerator
echo "# $TPU_NAME: $ACCELERATOR_TYPE, $WORKERS worker(s), runtime $RUNTIME" >&2

# The opt-in fit check before paying for a slice (PLAN=1).
plan_first() {
  [[ "${PLAN:-0}" == 1 ]] || return 0
  need CONFIG
  local overrides=() arg
  for arg in ${TRAIN_ARGS:-}; do
    [[ "$arg" == --config.* ]] && overrides+=("$arg")
  done
  # shellcheck disable=SC2086  # PLAN_CLI may be a command with arguments
  run ${PLAN_CLI:-electra-jax} plan --config "$CONFIG" --target "$ACCELERATOR_TYPE" "${overrides[@]}" \
    || die "the run does not fit $ACCELERATOR_TYPE (electra-jax plan above); nothing was created"
}

case "$ACTION" in
  create)
    plan_first
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME" "${EXTRA[@]}"
    ;;
  create-queued)  # waits in the queue for capacity; add --spot, --reserved, --valid-until-duration=...
    plan_first
    run gcloud compute tpus queued-resources create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME" "${EXTRA[@]}"
    ;;
  setup)
    need REPO
    # The images' python3 is 3.10 and the package needs 3.11+: uv brings the Python it asks for into
    # a venv, and everything after runs that venv's interpreter by absolute path (a non-interactive
    # ssh shell has no user bin directory on PATH).
    spec=$(printf '%q' "electra-jax[${EXTRAS-tpu}] @ $REPO")
    ssh_all "set -euo pipefail
python3 -m pip install --user --quiet --upgrade uv
\$HOME/.local/bin/uv venv --quiet --allow-existing --python ${PYTHON_VERSION:-3.12} $VENV
\$HOME/.local/bin/uv pip install --quiet --python $VENV/bin/python $spec
$VENV/bin/electra-jax --version"
    ;;
  train)
    need CONFIG DATA WORKDIR
    # One run per worker at a time: a live pid file refuses (stop it first); stray processes still
    # holding the TPU (an earlier run that did not exit) are killed, or the new run cannot open it.
    # nohup + a log per worker: the run outlives the ssh session. Rerunning `train` resumes, and the
    # persistent compilation cache in the workdir skips recompiling the step.
    ssh_all "set -euo pipefail
if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then echo \"electra-jax is still running (pid \$(cat $PID)); launch/tpu.sh stop first\" >&2; exit 1; fi
holders=\$(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true)
if [ -n \"\$holders\" ]; then echo \"freeing the TPU from pids \$holders\"; sudo kill -9 \$holders; fi
export JAX_COMPILATION_CACHE_DIR=$(printf '%q' "$WORKDIR/xla-cache")
cd \$HOME
nohup $VENV/bin/electra-jax pretrain --config $(printf '%q' "$CONFIG") --data $(printf '%q' "$DATA") \
--workdir $(printf '%q' "$WORKDIR") ${TRAIN_ARGS:-} > $LOG 2>&1 < /dev/null &
echo \$! > $PID"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker="${WORKER:-0}" \
      --command="tail -n 50 -f $LOG"
    ;;
  stop)  # SIGTERM by pid (a pattern would match this very shell): every worker saves the step and exits
    ssh_all "if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then
  pid=\$(cat $PID); kill -TERM \$pid
  for _ in \$(seq 900); do kill -0 \$pid 2>/dev/null || break; sleep 1; done
  if kill -0 \$pid 2>/dev/null; then echo \"pid \$pid still running after 900 s\" >&2; exit 1; fi
  echo \"stopped pid \$pid (saved; rerun train to resume)\"
else echo 'not running'; fi"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet "${EXTRA[@]}"
    ;;
  delete-queued)  # a TPU made by create-queued: the queued resource and its node
    run gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --force \
      --quiet "${EXTRA[@]}"
    ;;
  *)
    die "usage: launch/tpu.sh [--dry-run] create|create-queued|setup|train|logs|stop|delete|delete-queued [gcloud flags]"
    ;;
esac
