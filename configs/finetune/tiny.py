"""Fine-tuning the CPU-sized tiny model (tests, the offline real-data check): fp32, larger lr."""

from electra_jax.config import finetune_config


def get_config():
    c = finetune_config()
    c.model.dtype = "float32"
    c.optim.learning_rate = 1e-3
    c.train.log_every = 20
    return c
