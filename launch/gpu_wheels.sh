#!/usr/bin/env bash
# The wheels a GPU machine without a package registry lacks for launch/bench_gpu.sh, downloaded here
# for its Python (3.12, x86-64 Linux by default) into .whl/ (git-ignored; carry it to that machine):
# ml_collections, pinned as in constraints.txt. The device image of this project has everything else
# (jax[cuda13], flax, optax, orbax-checkpoint, transformers, torch, tokenizers, absl-py, PyYAML).
#
#   launch/gpu_wheels.sh [DEST] [PACKAGE==VERSION ...]    # defaults: .whl and ml_collections
#   PYTHON_VERSION=3.11 launch/gpu_wheels.sh               # for another Python
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
shift || true
pin() { grep -i "^$1==" constraints.txt || { echo "gpu_wheels.sh: $1 is not pinned in constraints.txt" >&2; exit 2; }; }
PACKAGES=("$@")
(( ${#PACKAGES[@]} )) || PACKAGES=("$(pin ml_collections)")
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${PACKAGES[@]}"
ls -l "$DEST"
