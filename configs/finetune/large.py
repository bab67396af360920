"""Fine-tuning ELECTRA-Large: lr 5e-5 and layer-wise decay 0.9 (configure_finetuning.py)."""

from electra_jax.config import finetune_config


def get_config():
    c = finetune_config()
    c.optim.update(learning_rate=5e-5, layerwise_lr_decay=0.9)
    return c
