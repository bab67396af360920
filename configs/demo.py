"""The demo (`electra-jax demo`): the tiny preset with the generator sampled at temperature 2.

At this size (2 x 64, 1,000 steps of 16 x 64 tokens on the sample corpus) a generator sampled at the
paper's temperature 1 replaces words with frequent, plausible ones that the 2-layer discriminator
cannot tell from the originals: measured eval AUC 0.57 at step 1,000 and still 0.56 at 3,000 while
the generator improves (the independent PyTorch implementation trains the same, README "Whole runs").
At temperature 2 the replacements are less typical and the discriminator visibly learns (AUC 0.77 at
step 250, 0.78 at 1,000; the generator's MLM accuracy is unchanged). A departure from the paper, for
a demo that shows learning in two minutes; pretraining presets keep temperature 1."""

from electra_jax.presets.tiny import get_config as tiny


def get_config():
    c = tiny()
    c.objective.temperature = 2.0
    return c
