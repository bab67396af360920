"""Optimizers (optax): the original's Adam without bias correction, AdamW and LAMB, all with global-norm
clipping, decoupled weight decay that skips LayerNorm and biases (embedding tables *are* decayed, as in
google-research/electra `optimization.py`) and the original schedule

    lr(t) = peak * (1 - min(t, T) / T) ** power * min(1, t / warmup)

(warmup multiplies a decay that has already started).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
import optax.tree_utils as otu


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int,
                           power: float = 1.0) -> optax.Schedule:
    decay = optax.polynomial_schedule(init_value=peak, end_value=0.0, power=power,
                                      transition_steps=total_steps)
    if warmup_steps <= 0:
        return decay

    def schedule(step):
        return decay(step) * jnp.minimum(1.0, step / warmup_steps)

    return schedule


def scale_by_adam_without_bias_correction(b1: float = 0.9, b2: float = 0.999,
                                          eps: float = 1e-6) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) with raw exponential moments: `AdamWeightDecayOptimizer` in the original.

    optax.scale_by_adam always bias-corrects; early steps then differ by ~1/sqrt(1 - b2^t).
    """

    def init_fn(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=otu.tree_zeros_like(params),
                                      nu=otu.tree_zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = otu.tree_update_moment(updates, state.mu, b1, 1)
        nu = otu.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _dict_keys(path) -> list[str]:
    return [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]


def decay_mask(params):
    """True where weight decay applies: not LayerNorm parameters, not biases (incl. `output_bias`)."""

    def decays(path, _):
        names = _dict_keys(path)
        if names and names[-1].endswith("bias"):
            return False
        return not any("layer_norm" in n.lower() or "layernorm" in n.lower() for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def layerwise_lr_decay(depths_fn, decay: float) -> optax.GradientTransformation:
    """Scale each parameter's update by decay^(top - depth), `depths_fn(tree) -> (depth per leaf, top)`.

    The depths come from the tree's paths, so the factors are constants at trace time."""

    def update_fn(updates, state, params=None):
        del params
        depths, top = depths_fn(updates)
        return jax.tree.map(lambda u, d: u * decay ** (top - d), updates, depths), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def make_optimizer(config: ml_collections.ConfigDict, depths_fn=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain named by `config.optim.name`, and its learning-rate schedule (for logging).

    `depths_fn(params) -> (depth tree, top)` enables `optim.layerwise_lr_decay` (fine-tuning)."""
    p = config.optim
    schedule = learning_rate_schedule(p.learning_rate, config.num_train_steps, p.warmup_steps,
                                      p.lr_decay_power)
    if p.name == "electra_adam":
        core = optax.chain(
            scale_by_adam_without_bias_correction(p.b1, p.b2, p.eps),
            optax.add_decayed_weights(p.weight_decay, mask=decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    elif p.name == "adamw":
        core = optax.adamw(schedule, b1=p.b1, b2=p.b2, eps=p.eps, weight_decay=p.weight_decay,
                           mask=decay_mask)
    elif p.name == "lamb":
        core = optax.lamb(schedule, b1=p.b1, b2=p.b2, eps=p.eps, weight_decay=p.weight_decay,
                          mask=decay_mask)
    else:  # validate() rejects this earlier, with the allowed names
        raise ValueError(f"unknown optimizer {p.name!r}")
    if depths_fn is not None and p.layerwise_lr_decay < 1.0:
        core = optax.chain(core, layerwise_lr_decay(depths_fn, p.layerwise_lr_decay))
    if p.grad_clip_norm and p.grad_clip_norm > 0:
        core = optax.chain(optax.clip_by_global_norm(p.grad_clip_norm), core)
    if p.skip_nonfinite > 0:  # drop steps with NaN/Inf gradients, up to this many in a row
        core = optax.apply_if_finite(core, max_consecutive_errors=p.skip_nonfinite)
    return core, schedule
