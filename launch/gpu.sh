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

# JAX must see GPUs through exactly one CUDA plugin (jax[cuda12] and an image's own jax[cuda13] side
# by side is refused). Run by the Python electra-jax is installed in.
read -r -d '' GPU_CHECK <<'PY' || true
import importlib.util, socket, sys
where = f"{sys.argv[1]} on {socket.gethostname()}"
plugins = []
if importlib.util.find_spec("jax_plugins") is not None:
    plugins = [p for p in ("xla_cuda12", "xla_cuda13") if importlib.util.find_spec("jax_plugins." + p)]
if len(plugins) > 1:
    sys.exit(f"{where}: two CUDA plugins are installed ({' and '.join(plugins)}): keep the one your image "
             "or pip brought (pip uninstall jax-cuda12-plugin jax-cuda12-pjrt, or the cuda13 pair)")
try:
    import jax
    gpus = jax.devices("gpu")
except Exception as e:
    first = (str(e).splitlines() or [""])[0]
    sys.exit(f"{where}: JAX sees no GPU ({type(e).__name__}{': ' + first if first else ''}); not training on the CPU. Give this "
             "process GPUs (Slurm: --gpus-per-node) or install the CUDA plugin (pip install -c constraints.txt "
             "'.[cuda]')")
print(f"{where}: {len(gpus)} GPU(s), {gpus[0].device_kind}")
PY

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
"$python" -c "$GPU_CHECK" launch/gpu.sh || exit 1
exec electra-jax pretrain "$@"
