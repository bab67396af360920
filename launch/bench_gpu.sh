#!/usr/bin/env bash
# The GPU benchmark in one go: electra-jax against transformers' PyTorch ELECTRA (eager and
# torch.compile) on the same GPU, MFU and peak memory, the optimisation variants (fused attention,
# PRNG implementations, the Gumbel sampler, remat), then the XLA flag sets on ELECTRA-Base at 128.
# Needs jax[cuda], flax, optax, orbax-checkpoint, transformers, torch, tokenizers and ml_collections;
# no TensorFlow. A machine that cannot download gets the missing wheels from WHEELS (default .whl/,
# filled by launch/gpu_wheels.sh), installed into a scratch folder, never into the system.
#
#   launch/gpu_wheels.sh                # here, with a package registry: .whl/ for Python 3.12
#   launch/bench_gpu.sh OUT_DIR         # there, from a checkout (installed or not)
#   electra-jax bench-table OUT_DIR/*.json --markdown BENCHMARKS.md
#
# Every result is written to OUT_DIR as soon as it is measured (gpu.json, flags-*.json, bench.log:
# five files), so a window that closes early keeps what ran; the suite runs each case's own step
# first, then the PyTorch peers, then the variants. BENCH_BUDGET_S (default 360) is the time after
# which no new measurement starts; the one running finishes (a torch.compile takes up to ~1 min).
# BENCH_SUITE=smoke runs the tiny suite and allows a CPU (what CI runs to prove the script works).
set -euo pipefail

OUT="${1:?usage: launch/bench_gpu.sh OUT_DIR}"
BUDGET="${BENCH_BUDGET_S:-360}"
SUITE="${BENCH_SUITE:-gpu}"
PYTHON="${PYTHON:-python3}"
SITE="${BENCH_SITE:-/tmp/electra-jax-site}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"  # a relative OUT_DIR is the caller's, not the checkout's
cd "$(dirname "$0")/.."
WHEELS="${BENCH_WHEELS:-$PWD/.whl}"
START=$SECONDS

main() {
echo "== bench_gpu.sh $(date -u +%FT%TZ) suite=$SUITE budget=${BUDGET}s"
{ nvidia-smi || true; } 2>&1

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  echo "== installing $(compgen -G "$WHEELS/*.whl" | wc -l) wheel(s) from $WHEELS into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || { echo "bench_gpu.sh: installing the wheels in $WHEELS failed"; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and torch share the GPU in one process: JAX must not claim 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

SUITE="$SUITE" "$PYTHON" - <<'EOF' || exit 2
import importlib.util, os, sys
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "transformers", "torch", "ml_collections",
                       "tokenizers") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench_gpu.sh: missing Python packages: {', '.join(missing)} (pip install them, or put their "
             "wheels in .whl/ with launch/gpu_wheels.sh)")
import jax
print("jax", jax.__version__, jax.devices())
if jax.devices()[0].platform != "gpu" and os.environ["SUITE"] == "gpu":
    sys.exit(f"bench_gpu.sh: JAX sees no GPU ({jax.devices()}); install jax[cuda12] or jax[cuda13]")
EOF

bench() {  # bench NAME XLA_FLAGS ARGS...: one suite run within what is left of the budget
  local name="$1" flags="$2" left=$((BUDGET - (SECONDS - START)))
  shift 2
  if (( left <= 0 )); then
    echo "skipped $name: over the ${BUDGET}s budget"
    return 0
  fi
  echo "== $name (XLA_FLAGS=$flags, ${left}s of budget left)"
  XLA_FLAGS="$flags" "$PYTHON" -m electra_jax.cli bench --suite "$SUITE" --out "$OUT/$name.json" \
    --budget-s "$left" "$@" || echo "$name failed (see above)"
}

# The flags launch/gpu.sh sets, then the alternatives on one case (GPU flags: XLA:CPU rejects them).
LHS="--xla_gpu_enable_latency_hiding_scheduler=true"
if [[ "$SUITE" == gpu ]]; then
  bench gpu "$LHS"
  bench flags-none "" --cases base@128 --no-peers --no-variants
  bench flags-triton-any "$LHS --xla_gpu_triton_gemm_any=true" --cases base@128 --no-peers --no-variants
  bench flags-maxtext "$LHS --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=" \
    --cases base@128 --no-peers --no-variants
else
  bench "$SUITE" ""
fi
echo "done in $((SECONDS - START)) s; results in $OUT"
}

main 2>&1 | tee -a "$OUT/bench.log"
