#!/usr/bin/env bash
# The GPU benchmark in one go (about 8 minutes on one H100/H200): electra-jax against transformers'
# PyTorch ELECTRA (eager and torch.compile) on the same GPU, MFU, the optimisation variants, then the
# XLA flag sets on ELECTRA-Base at 128. Needs jax[cuda], flax, optax, orbax-checkpoint, transformers,
# torch and ml_collections; installs nothing and needs no TensorFlow.
#
#   launch/bench_gpu.sh OUT_DIR         # run from a checkout (installed or not)
#   electra-jax bench-table OUT_DIR/*.json --markdown BENCHMARKS.md
#
# Every result is written to OUT_DIR as soon as it is measured, so a window that closes early keeps
# what ran. BENCH_BUDGET_S (default 480) stops starting new parts after that many seconds.
set -euo pipefail

OUT="${1:?usage: launch/bench_gpu.sh OUT_DIR}"
BUDGET="${BENCH_BUDGET_S:-480}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and torch share the GPU in one process: JAX must not claim 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$SECONDS

"$PYTHON" - <<'EOF' || exit 2
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "transformers", "torch", "ml_collections",
                       "tokenizers") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench_gpu.sh: missing Python packages: {', '.join(missing)} (pip install them first)")
import jax
if jax.devices()[0].platform != "gpu":
    sys.exit(f"bench_gpu.sh: JAX sees no GPU ({jax.devices()}); install jax[cuda12]")
EOF
{ nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1

bench() {  # bench NAME XLA_FLAGS ARGS...: one suite run, skipped once the budget is spent
  local name="$1" flags="$2"
  shift 2
  if (( SECONDS - START > BUDGET )); then
    echo "skipped $name: over the ${BUDGET}s budget" | tee -a "$OUT/skipped.txt"
    return 0
  fi
  echo "== $name (XLA_FLAGS=$flags)"
  XLA_FLAGS="$flags" "$PYTHON" -m electra_jax.cli bench --suite gpu --out "$OUT/$name.json" "$@" \
    2>&1 | tee "$OUT/$name.log" || echo "$name failed (see $OUT/$name.log)"
}

# The flags launch/gpu.sh sets, then the alternatives on one case.
LHS="--xla_gpu_enable_latency_hiding_scheduler=true"
bench gpu "$LHS"
bench flags-none "" --cases base@128 --no-peers --no-variants
bench flags-triton-any "$LHS --xla_gpu_triton_gemm_any=true" --cases base@128 --no-peers --no-variants
bench flags-maxtext "$LHS --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=" \
  --cases base@128 --no-peers --no-variants
echo "done in $((SECONDS - START)) s; results in $OUT"
