"""`python -m electra_jax.gpu_check WHERE`: one line and exit 1 unless JAX sees a GPU through exactly one
CUDA plugin. launch/gpu.sh and launch/slurm.sbatch (on every node) run it before training, so a job that
got no GPU stops instead of training on the CPU; it lives here because Slurm runs a copy of the batch
script, which cannot read files beside it."""

import importlib.util
import socket
import sys


def main(where: str) -> str:
    where = f"{where} on {socket.gethostname()}"
    plugins = []
    if importlib.util.find_spec("jax_plugins") is not None:
        plugins = [p for p in ("xla_cuda12", "xla_cuda13") if importlib.util.find_spec("jax_plugins." + p)]
    if len(plugins) > 1:
        sys.exit(f"{where}: two CUDA plugins are installed ({' and '.join(plugins)}): keep the one your image "
                 "or pip brought (pip uninstall jax-cuda12-plugin jax-cuda12-pjrt, or the cuda13 pair)")
    try:
        import jax

        gpus = jax.devices("gpu")
    except Exception as e:  # no plugin, no driver, CUDA_VISIBLE_DEVICES empty: jax says which
        first = (str(e).splitlines() or [""])[0]
        sys.exit(f"{where}: JAX sees no GPU ({type(e).__name__}{': ' + first if first else ''}); not training "
                 "on the CPU. Give this process GPUs (Slurm: --gpus-per-node) or install the CUDA plugin "
                 "(pip install -c constraints.txt '.[cuda]')")
    return f"{where}: {len(gpus)} GPU(s), {gpus[0].device_kind}"


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "electra-jax"))
