"""Presets: `--config NAME` finds NAME.py here (installed as electra_jax.presets)."""
