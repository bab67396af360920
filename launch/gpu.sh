#!/usr/bin/env bash
# electra-jax pretraining on every GPU of this machine: one process, a mesh over all local GPUs.
#
#   launch/gpu.sh [--dry-run] --config configs/base.py --data DATA --workdir WORKDIR [--config.x=y ...]
#
# XLA flags: the latency-hiding scheduler overlaps collectives with compute, and the persistent
# compilation cache skips recompiling on restarts. Add your own in XLA_FLAGS / JAX_* beforehand.
# JAX_PLATFORMS=cuda and a check before training: a machine where JAX sees no GPU (no CUDA plugin,
# no driver, CUDA_VISIBLE_DEVICES empty) stops with one line instead of training on the CPU.
# XLA_PYTHON_CLIENT_MEM_FRACTION 0.92 (JAX's default is 0.75), as in launch/slurm.sbatch: this one
# process is the only user of its GPUs, and the 8% left covers what lives outside XLA's pool (the CUDA
# context, cuBLAS/cuDNN workspaces, NCCL buffers).
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
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"

if [[ "$DRY_RUN" == 1 ]]; then
  echo "XLA_FLAGS=$XLA_FLAGS"
  echo "JAX_COMPILATION_CACHE_DIR=$JAX_COMPILATION_CACHE_DIR"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  echo "JAX_PLATFORMS=$JAX_PLATFORMS"
  echo "# first: JAX must see a GPU"
  printf '%q ' electra-jax pretrain "$@"
  printf '\n'
  exit 0
fi
bin=$(command -v electra-jax) || { echo "launch/gpu.sh: electra-jax is not on PATH (activate its venv)" >&2; exit 2; }
python="$(dirname "$bin")/python3"
[[ -x "$python" ]] || python=python3
# JAX must see GPUs through one CUDA plugin, unless JAX_PLATFORMS was set to leave them out on purpose.
if [[ "$JAX_PLATFORMS" == *cuda* || "$JAX_PLATFORMS" == *gpu* ]]; then
  "$python" -m electra_jax.gpu_check launch/gpu.sh || exit 1
else
  echo "launch/gpu.sh: JAX_PLATFORMS=$JAX_PLATFORMS: not checking for GPUs, as asked" >&2
fi
exec electra-jax pretrain "$@"
