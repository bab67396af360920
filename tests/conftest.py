"""Eight fake CPU devices for the whole suite (set before jax is imported); single-device tests take
`jax.devices()[:1]`."""

import os

# LLVM optimisation level 1 halves XLA:CPU compile time for ~15% slower steps: right for tiny tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_config():
    from electra_jax.config import load_config

    return load_config(str(ROOT / "configs" / "tiny.py"))
