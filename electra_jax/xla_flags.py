"""Compiler flags for TPU and GPU runs, in one place: `pretrain`/`finetune` add them before JAX starts and
`plan` compiles with them, so a plan measures the program a run will execute.

TPU (libtpu, LIBTPU_INIT_ARGS), as MaxText sets them: collectives run asynchronously and overlap the
layers' compute (FSDP's weight gathers, the gradients' reductions); `rbg` random keys are generated
sharded instead of replicated (needed for `rng_impl=rbg` to shard: config.resolve_rng_impl picks it on
TPU). GPU (XLA_FLAGS): the latency-hiding scheduler and pipelined collectives, so NCCL transfers overlap
compute. A flag the user already set (same name, any value) is left as the user set it.

    python -m electra_jax.xla_flags tpu|gpu   # the flags, for a shell
"""

from __future__ import annotations

import os
import sys

TPU_FLAGS = (
    "--xla_tpu_spmd_rng_bit_generator_unsafe=true",
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)
GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)
_VARIABLE = {"tpu": "LIBTPU_INIT_ARGS", "gpu": "XLA_FLAGS"}


def merged(existing: str, flags: tuple[str, ...]) -> str:
    """`existing` plus each of `flags` whose name it does not already set."""
    named = {f.split("=", 1)[0] for f in existing.split()}
    return " ".join([existing.strip(), *[f for f in flags if f.split("=", 1)[0] not in named]]).strip()


def apply(platform: str, environ=os.environ) -> None:
    """Add the `platform` ("tpu" or "gpu") flags to the environment; call before JAX starts a backend."""
    variable = _VARIABLE[platform]
    environ[variable] = merged(environ.get(variable, ""), TPU_FLAGS if platform == "tpu" else GPU_FLAGS)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in _VARIABLE:
        sys.exit("usage: python -m electra_jax.xla_flags tpu|gpu")
    print(" ".join(TPU_FLAGS if sys.argv[1] == "tpu" else GPU_FLAGS))
