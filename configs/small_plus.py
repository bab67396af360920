"""ELECTRA-Small++, the released `electra-small-*` checkpoints: Small with a generator as wide as the
discriminator (generator_hidden_size 1.0, google-research/electra README and #39) trained 4M steps."""

from electra_jax.config import accelerator_layout, default_config


def get_config():
    c = default_config()
    c.model.generator_hidden_fraction = 1.0
    c.num_train_steps = 4_000_000
    return accelerator_layout(c)
