"""Fine-tuning ELECTRA-Small with the paper's Table 7 values: lr 3e-4 and no weight decay (the code's
defaults are 1e-4 and 0.01; --config.optim.learning_rate=1e-4 --config.optim.weight_decay=0.01)."""

from electra_jax.config import finetune_config


def get_config():
    c = finetune_config()
    c.optim.update(learning_rate=3e-4, weight_decay=0.0)
    return c
