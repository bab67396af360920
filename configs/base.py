"""ELECTRA-Base (paper Table 6): 12 x 768, 12 heads, FFN 3072, embeddings 768, generator 1/3,
15% masking at seq 512, batch 256, lr 2e-4, 766K steps, warmup 10k."""

from electra_jax.config import accelerator_layout, default_config


def get_config():
    c = default_config()
    c.model.update(embedding_size=768, hidden_size=768, num_layers=12, num_heads=12,
                   intermediate_size=3072, generator_hidden_fraction=1 / 3)
    c.data.seq_len = 512
    c.batch_size = 256
    c.optim.learning_rate = 2e-4
    c.num_train_steps = 766_000
    return accelerator_layout(c)
