"""The replaced-token-detection objective: mask -> generator -> Gumbel sample -> discriminator -> loss.

Follows google-research/electra `run_pretraining.py`. Everything here is a pure function of arrays and
an explicit PRNG key; the loss function is what `train.py` differentiates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from electra_jax.config import ObjectiveSpec
from electra_jax.masking import first_occurrence, mask_tokens, scatter_tokens
from electra_jax.model import Electra

Array = jax.Array


def mlm_loss(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """Weighted cross-entropy over the slots: sum(w * CE) / (sum(w) + 1e-6). Returns (loss, per-slot CE)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(weights * nll) / (jnp.sum(weights) + 1e-6), nll


def disc_loss(logits: Array, labels: Array, input_mask: Array) -> Array:
    """Sigmoid cross-entropy over every non-pad token ([CLS]/[SEP] included)."""
    mask = input_mask.astype(jnp.float32)
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    return jnp.sum(losses * mask) / (jnp.sum(mask) + 1e-6)


def sample_tokens(rng: Array, logits: Array, temperature: float = 1.0,
                  disallow: Array | None = None) -> Array:
    """Gumbel-max sample per slot, argmax(logits / T + g), as `sample_from_softmax`.

    `disallow` (token ids) subtracts 1000 from those logits, the original's `disallow_correct`.
    """
    logits = logits.astype(jnp.float32) / temperature
    if disallow is not None:
        logits = logits - 1000.0 * jax.nn.one_hot(disallow, logits.shape[-1], dtype=logits.dtype)
    u = jax.random.uniform(rng, logits.shape, jnp.float32)
    gumbel = -jnp.log(-jnp.log(u + 1e-9) + 1e-9)
    return jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32)


def replace_tokens(input_ids: Array, positions: Array, weights: Array, sampled: Array):
    """Write the samples into the *original* sequence; label = written and different from the original.

    A position drawn twice is written once (from its first slot) so the result is well defined; the
    original's integer average of the two samples there is an artefact we do not copy.
    """
    corrupted = scatter_tokens(input_ids, positions, sampled, first_occurrence(positions, weights))
    return corrupted, corrupted != input_ids


def _ratio(num, den):
    return jnp.stack([num, den]).astype(jnp.float32)


def electra_loss(params, batch: dict, rng: Array, *, model: Electra, spec: ObjectiveSpec,
                 deterministic: bool = False):
    """Total loss = gen_weight * MLM + disc_weight * disc, and metrics as {name: [numerator, denominator]}.

    The discriminator sees integer token ids, so no gradient reaches the generator through sampling;
    the stop_gradient on the logits states it and keeps the sampler out of the backward pass.
    """
    input_ids, segment_ids = batch["input_ids"], batch["segment_ids"]
    input_mask = batch["input_mask"]
    k_mask, k_gen, k_sample, k_disc = jax.random.split(rng, 4)
    masked = mask_tokens(
        k_mask, input_ids, input_mask, mask_prob=spec.mask_prob, max_predictions=spec.max_predictions,
        mask_id=spec.mask_id, never_mask_ids=spec.never_mask_ids,
        mask_token_prob=spec.mask_token_prob, with_replacement=spec.with_replacement)
    variables = {"params": params}

    gen_logits = model.apply(variables, masked.input_ids, segment_ids, input_mask, masked.positions,
                             deterministic, method=Electra.generator_logits, rngs={"dropout": k_gen})
    mlm, _ = mlm_loss(gen_logits, masked.original_ids, masked.weights)
    sampled = sample_tokens(k_sample, jax.lax.stop_gradient(gen_logits), spec.temperature,
                            masked.original_ids if spec.disallow_correct else None)
    corrupted, is_fake = replace_tokens(input_ids, masked.positions, masked.weights, sampled)

    disc_logits = model.apply(variables, corrupted, segment_ids, input_mask, deterministic,
                              method=Electra.discriminator_logits, rngs={"dropout": k_disc})
    disc = disc_loss(disc_logits, is_fake, input_mask)
    loss = spec.gen_weight * mlm + spec.disc_weight * disc

    w, m = masked.weights, input_mask.astype(jnp.float32)
    fake = is_fake.astype(jnp.float32) * m
    pred = (disc_logits > 0).astype(jnp.float32) * m
    metrics = {
        "loss": _ratio(loss, 1.0),
        "mlm_loss": _ratio(mlm, 1.0),
        "disc_loss": _ratio(disc, 1.0),
        "mlm_accuracy": _ratio(jnp.sum(w * (jnp.argmax(gen_logits, -1) == masked.original_ids)), jnp.sum(w)),
        "sampled_accuracy": _ratio(jnp.sum(w * (sampled == masked.original_ids)), jnp.sum(w)),
        "disc_accuracy": _ratio(jnp.sum(m * (pred == fake)), jnp.sum(m)),
        "disc_precision": _ratio(jnp.sum(pred * fake), jnp.sum(pred)),
        "disc_recall": _ratio(jnp.sum(pred * fake), jnp.sum(fake)),
        "replaced_fraction": _ratio(jnp.sum(fake), jnp.sum(m)),
    }
    return loss, metrics


def summarize(metrics: dict) -> dict:
    """[numerator, denominator] pairs -> means (0 where nothing was counted)."""
    return {k: jnp.where(v[1] > 0, v[0] / jnp.maximum(v[1], 1e-12), 0.0) for k, v in metrics.items()}
