"""ELECTRA-Small (paper Table 6): 12 x 256, 4 heads, FFN 1024, embeddings 128, generator 1/4,
15% masking at seq 128, batch 128, lr 5e-4, 1M steps, warmup 10k: the library defaults, laid out for
accelerators."""

from electra_jax.config import accelerator_layout, default_config


def get_config():
    return accelerator_layout(default_config())
