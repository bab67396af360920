#!/usr/bin/env bash
# electra-jax pretraining on every GPU of this machine: one process, a mesh over all local GPUs.
#
#   launch/gpu.sh [--dry-run] --config configs/base.py --data DATA --workdir WORKDIR [--config.x=y ...]
#
# XLA flags: the latency-hiding scheduler overlaps collectives with compute, and the persistent
# compilation cache skips recompiling on restarts. Add your own in XLA_FLAGS / JAX_* beforehand.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
if [[ $# -eq 0 ]]; then
  echo "usage: launch/gpu.sh [--dry-run] --config CONFIG --data DATA --workdir WORKDIR [--config.x=y ...]" >&2
  exit 2
fi

export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/electra-jax/xla}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

if [[ "$DRY_RUN" == 1 ]]; then
  echo "XLA_FLAGS=$XLA_FLAGS"
  echo "JAX_COMPILATION_CACHE_DIR=$JAX_COMPILATION_CACHE_DIR"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  printf '%q ' electra-jax pretrain "$@"
  printf '\n'
else
  exec electra-jax pretrain "$@"
fi
