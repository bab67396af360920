"""Dynamic masking on device: google-research/electra `pretrain_helpers.mask`, in pure jnp.

Static shapes throughout: every sequence gets exactly N = max_predictions slots (positions + weights);
the first k = max(1, min(N, round(mask_prob * real_tokens))) carry weight 1, the rest weight 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Masked(NamedTuple):
    input_ids: Array  # [B, S] with [MASK] written at the chosen slots
    positions: Array  # [B, N] int32; 0 where weight is 0
    weights: Array  # [B, N] float32, 1 for real slots
    original_ids: Array  # [B, N] the tokens at `positions` before masking (the MLM targets)


def num_to_mask(input_mask: Array, mask_prob: float, max_predictions: int) -> Array:
    """k per sequence; the count includes [CLS]/[SEP], as the original. Rounds half to even, as tf.round."""
    real = jnp.sum(input_mask, axis=-1).astype(jnp.float32)
    return jnp.clip(jnp.round(real * mask_prob).astype(jnp.int32), 1, max_predictions)


def candidates(input_ids: Array, input_mask: Array, never_mask_ids) -> Array:
    """Tokens that may be masked: real (non-pad) and not one of `never_mask_ids` ([CLS], [SEP], [MASK], [PAD])."""
    ok = input_mask.astype(bool)
    for token in never_mask_ids:
        ok &= input_ids != token
    return ok


def mask_tokens(
    rng: Array,
    input_ids: Array,
    input_mask: Array,
    *,
    mask_prob: float,
    max_predictions: int,
    mask_id: int,
    never_mask_ids,
    mask_token_prob: float = 0.85,
    with_replacement: bool = True,
    random_token_prob: float = 0.0,
    vocab_size: int = 0,
) -> Masked:
    """Choose slots to predict and write [MASK] into 85% of them (the rest keep their token).

    With `random_token_prob` > 0 that share of the slots gets a uniformly random token from
    [0, vocab_size) instead (BERT's 80/10/10 is mask_token_prob=0.8, random_token_prob=0.1); a position
    drawn twice shows [MASK] if either slot says so, as the original's scatter of [MASK] writes.

    With replacement (the original): N independent uniform draws over the candidates, so a position
    can repeat; it is masked once but predicted, and counted in the loss, once per slot. Without: the
    first k of a random permutation of the candidates. A sequence with no candidate gets weight 0.
    """
    batch, seq_len = input_ids.shape
    k_pos, k_mask = jax.random.split(rng)
    cand = candidates(input_ids, input_mask, never_mask_ids)
    num_cand = jnp.sum(cand, axis=-1)
    k = num_to_mask(input_mask, mask_prob, max_predictions)
    if with_replacement:
        logits = jnp.where(cand, 0.0, -jnp.inf)[:, None, :]
        positions = jax.random.categorical(k_pos, logits, axis=-1, shape=(batch, max_predictions))
    else:
        k = jnp.minimum(k, num_cand)
        scores = jnp.where(cand, jax.random.uniform(k_pos, (batch, seq_len)), -1.0)
        positions = jax.lax.top_k(scores, max_predictions)[1]
    slot = jnp.arange(max_predictions)[None, :]
    valid = (slot < k[:, None]) & (num_cand[:, None] > 0)
    positions = jnp.where(valid, positions, 0).astype(jnp.int32)
    weights = valid.astype(jnp.float32)
    original = jnp.take_along_axis(input_ids, positions, axis=1)

    u = jax.random.uniform(k_mask, (batch, max_predictions))  # the bits jax.random.bernoulli draws
    to_mask = valid & (u < mask_token_prob)
    masked_ids = input_ids
    if random_token_prob > 0:
        to_random = valid & (u < mask_token_prob + random_token_prob)  # [MASK], written last, wins
        random_ids = jax.random.randint(jax.random.fold_in(k_mask, 1), positions.shape, 0, vocab_size)
        masked_ids = scatter_tokens(masked_ids, positions, random_ids, to_random)
    masked_ids = scatter_tokens(masked_ids, positions, jnp.full_like(positions, mask_id), to_mask)
    return Masked(masked_ids, positions, weights, original)


def scatter_tokens(ids: Array, positions: Array, tokens: Array, write: Array) -> Array:
    """ids[b, positions[b, j]] = tokens[b, j] where write[b, j]; other slots are dropped (out of range)."""
    batch, seq_len = ids.shape
    target = jnp.where(write, positions, seq_len)
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions.shape)
    return jnp.asarray(ids).at[rows, target].set(jnp.asarray(tokens, ids.dtype), mode="drop")


def first_occurrence(positions: Array, weights: Array) -> Array:
    """True for weighted slots whose position no earlier weighted slot in the row already holds."""
    n = positions.shape[-1]
    same = (positions[:, :, None] == positions[:, None, :]) & (weights[:, None, :] > 0)
    earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)[None]
    return (weights > 0) & ~jnp.any(same & earlier, axis=-1)
