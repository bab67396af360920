"""ELECTRA-Large (paper Table 6): 24 x 1024, 16 heads, FFN 4096, embeddings 1024, generator 1/4,
25% masking at seq 512, batch 2048, lr 2e-4, 400K steps (the released model: 1.75M), warmup 10k."""

from electra_jax.config import accelerator_layout, default_config


def get_config():
    c = default_config()
    c.model.update(embedding_size=1024, hidden_size=1024, num_layers=24, num_heads=16,
                   intermediate_size=4096, generator_hidden_fraction=0.25)
    c.objective.mask_prob = 0.25
    c.data.seq_len = 512
    c.batch_size = 2048
    c.optim.learning_rate = 2e-4
    c.num_train_steps = 400_000
    return accelerator_layout(c)
