#!/usr/bin/env bash
# electra-jax on a Cloud TPU VM slice (one host or a pod of several): every worker runs the same
# command and jax.distributed joins them (it detects Cloud TPU by itself).
#
#   launch/tpu.sh [--dry-run] create | create-queued | setup | train | logs | stop | delete
#
# Required environment: PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE (e.g. v4-32), and for `train`
# CONFIG (e.g. configs/base.py), DATA and WORKDIR (gs:// paths: every worker must see the same ones).
# For `setup` REPO: what pip installs on every worker (a git URL, e.g. git+https://github.com/you/electra-jax.git,
# or a wheel on gs:// copied first). Optional: RUNTIME_VERSION (default tpu-ubuntu2204-base), TRAIN_ARGS
# (extra flags, e.g. "--config.batch_size=1024").
# --dry-run prints every command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
ACTION="${1:-}"

need() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "launch/tpu.sh: set $name (see the top of this script)" >&2
      exit 2
    fi
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

# Hosts in a slice: v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count chips (4 per host
# beyond a single 8-chip host).
workers() {
  local kind="${ACCELERATOR_TYPE%-*}" size="${ACCELERATOR_TYPE##*-}"
  case "$kind" in
    v2|v3|v4|v5p) echo $(( size > 8 ? size / 8 : 1 )) ;;
    v5litepod|v5e|v6e) echo $(( size > 8 ? size / 4 : 1 )) ;;
    *) echo "launch/tpu.sh: unknown ACCELERATOR_TYPE $ACCELERATOR_TYPE" >&2; exit 2 ;;
  esac
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="$1"
}

need PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
echo "# $TPU_NAME: $ACCELERATOR_TYPE, $(workers) worker(s)" >&2

case "$ACTION" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  create-queued)  # waits in the queue for capacity (spot/preemptible capacity: add --spot yourself)
    run gcloud compute tpus queued-resources create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
    ;;
  setup)
    need REPO
    ssh_all "python3 -m pip install -U pip && python3 -m pip install 'electra-jax[tpu] @ $REPO'"
    ;;
  train)
    need CONFIG DATA WORKDIR
    # nohup + a log per worker: the run survives the ssh session; rerunning `train` resumes, and
    # the persistent compilation cache in the workdir skips recompiling the step on every worker.
    ssh_all "JAX_COMPILATION_CACHE_DIR=$WORKDIR/xla-cache nohup electra-jax pretrain --config $CONFIG --data $DATA --workdir $WORKDIR \
${TRAIN_ARGS:-} > ~/electra-jax.log 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
      --command="tail -n 50 -f ~/electra-jax.log"
    ;;
  stop)  # SIGTERM: every worker saves the current step and exits
    ssh_all "pkill -TERM -f 'electra-jax pretrain' || true"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: launch/tpu.sh [--dry-run] create|create-queued|setup|train|logs|stop|delete" >&2
    exit 2
    ;;
esac
