"""Eight fake CPU devices for the whole suite (set before jax is imported); single-device tests take
`jax.devices()[:1]`."""

import os

# LLVM optimisation level 1 halves XLA:CPU compile time for ~15% slower steps: right for tiny tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole run, the CLI children included (they inherit the variables):
# the suite compiles the same tiny models again and again, each CLI test in a fresh process, and a hit
# skips the compile (a demo rerun: 76 s -> 41 s on 2 cores). Removed when the run ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="electra-jax-tests-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_config():
    from electra_jax.config import load_config

    return load_config(str(ROOT / "configs" / "tiny.py"))


@pytest.fixture(scope="session")
def kjv64(tmp_path_factory):
    """The sample corpus built as the tiny preset reads it (seq 64, 4 shards, 2% held out), once."""
    from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
    from electra_jax.data.builder import BuildArgs, build

    out = tmp_path_factory.mktemp("data") / "kjv64"
    build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=str(out), inputs=[SAMPLE_CORPUS], seq_len=64,
                    shards=4, eval_fraction=0.02, progress=False))
    return str(out)


@pytest.fixture(scope="session")
def random_discriminator(tmp_path_factory):
    """An HF export of a randomly initialised tiny ELECTRA: fine-tuning from it is from scratch."""
    import jax
    import numpy as np
    from flax import linen as nn

    from electra_jax.config import load_config, model_spec
    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.hf import export_pretrained
    from electra_jax.model import Electra, init_params

    spec = model_spec(load_config(str(ROOT / "configs" / "tiny.py")))
    params = jax.tree.map(np.asarray, nn.unbox(init_params(Electra(spec), jax.random.key(0), 64, 9)))
    out = tmp_path_factory.mktemp("hf")
    export_pretrained(params, spec, str(out), SAMPLE_TOKENIZER, "random tiny", pad_token_id=0)
    return str(out / "discriminator")
