"""Fine-tuning ELECTRA-Base: google-research/electra configure_finetuning.py (lr 1e-4, layer-wise
decay 0.8, weight decay 0.01, warmup 10%, batch 32, max_len 128, 3 epochs; 10 for RTE and STS-B)."""

from electra_jax.config import finetune_config


def get_config():
    return finetune_config()
