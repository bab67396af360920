"""Masking against the original procedure's rules, checked with numpy on the outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.masking import first_occurrence, mask_tokens, num_to_mask, scatter_tokens

PAD, CLS, SEP, MASK = 0, 2, 3, 4


def _batch(seed=0, batch=32, seq_len=64):
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, seq_len), np.int32)
    mask = np.zeros_like(ids)
    for b in range(batch):
        n = int(rng.integers(3, seq_len + 1))
        ids[b, :n] = rng.integers(5, 500, n)
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        if n > 4:
            ids[b, n // 2] = SEP
        mask[b, :n] = 1
    ids[0, 1] = MASK  # a literal [MASK] in the input must never be chosen
    ids[1], mask[1] = 0, 0  # only [CLS] [SEP]: nothing to mask, so no slot counts
    ids[1, :2], mask[1, :2] = (CLS, SEP), 1
    ids[2], mask[2] = 0, 0  # all padding (the eval reader's filler rows)
    return ids, mask


def _mask(rng, ids, mask, with_replacement=True, mask_prob=0.15, n=None):
    seq_len = ids.shape[1]
    n = n or int((mask_prob + 0.005) * seq_len)
    return mask_tokens(rng, jnp.asarray(ids), jnp.asarray(mask), mask_prob=mask_prob, max_predictions=n,
                       mask_id=MASK, never_mask_ids=(CLS, SEP, MASK, PAD),
                       with_replacement=with_replacement)


@pytest.mark.parametrize("with_replacement", [True, False])
def test_exact_count_and_never_special(with_replacement):
    ids, mask = _batch()
    n = int(0.155 * 64)
    out = jax.tree.map(np.asarray, _mask(jax.random.key(0), ids, mask, with_replacement))
    real = mask.sum(1)
    # k = max(1, min(N, round(p * real))) with numpy's round-half-even, as tf.round.
    expected_k = np.maximum(1, np.minimum(n, np.round(0.15 * real))).astype(int)
    num_cand = ((mask == 1) & ~np.isin(ids, [CLS, SEP, MASK, PAD])).sum(1)
    if not with_replacement:
        expected_k = np.minimum(expected_k, num_cand)
    expected_k[num_cand == 0] = 0
    np.testing.assert_array_equal(out.weights.sum(1), expected_k)
    assert out.positions.shape == out.weights.shape == (32, n)
    for b in range(32):
        chosen = out.positions[b][out.weights[b] > 0]
        assert np.all(mask[b, chosen] == 1)
        assert not np.isin(ids[b, chosen], [CLS, SEP, MASK, PAD]).any()
        np.testing.assert_array_equal(out.original_ids[b][out.weights[b] > 0], ids[b, chosen])
        assert np.all(out.positions[b][out.weights[b] == 0] == 0)
        if not with_replacement:
            assert len(set(chosen.tolist())) == len(chosen)
        # Only chosen positions may change, and only to [MASK].
        changed = np.nonzero(out.input_ids[b] != ids[b])[0]
        assert set(changed.tolist()) <= set(chosen.tolist())
        assert np.all(out.input_ids[b, changed] == MASK)


def test_mask_token_share_is_085():
    ids, mask = _batch(seed=1, batch=64)
    masked_share = []
    for i in range(40):
        out = _mask(jax.random.key(i), ids, mask, with_replacement=False)
        w = np.asarray(out.weights) > 0
        pos = np.asarray(out.positions)
        got = np.take_along_axis(np.asarray(out.input_ids), pos, axis=1)
        masked_share.append(((got == MASK) & w).sum() / w.sum())
    assert abs(np.mean(masked_share) - 0.85) < 0.02


def test_same_key_same_mask_and_different_key_differs():
    ids, mask = _batch()
    a = _mask(jax.random.key(7), ids, mask)
    b = _mask(jax.random.key(7), ids, mask)
    c = _mask(jax.random.key(8), ids, mask)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.positions, c.positions)


def test_with_replacement_can_repeat_positions():
    # Few candidates and many slots: the original draws with replacement, so repeats must occur.
    ids = np.array([[CLS, 10, 11, SEP] + [PAD] * 4], np.int32)
    mask = (ids != PAD).astype(np.int32)
    out = mask_tokens(jax.random.key(0), jnp.asarray(np.repeat(ids, 64, 0)), jnp.asarray(np.repeat(mask, 64, 0)),
                      mask_prob=0.5, max_predictions=2, mask_id=MASK, never_mask_ids=(CLS, SEP, MASK, PAD))
    w = np.asarray(out.weights)  # (with_replacement left out: the default is the original's)
    pos = np.asarray(out.positions)
    assert np.all(w.sum(1) == 2)
    assert np.any(pos[:, 0] == pos[:, 1])


def test_jit_and_vmap():
    ids, mask = _batch(batch=8)
    eager = _mask(jax.random.key(3), ids, mask)
    jitted = jax.jit(lambda r: _mask(r, ids, mask))(jax.random.key(3))
    np.testing.assert_array_equal(eager.input_ids, jitted.input_ids)
    keys = jax.random.split(jax.random.key(0), 3)
    vmapped = jax.vmap(lambda r: _mask(r, ids, mask))(keys)
    assert vmapped.input_ids.shape == (3, 8, 64)
    np.testing.assert_array_equal(vmapped.positions[1], _mask(keys[1], ids, mask).positions)


def test_the_configured_objective_never_masks_special_tokens():
    """The ids come from the config's tokens ([PAD]=0 [CLS]=2 [SEP]=3 [MASK]=4 in the presets), and a
    batch full of [SEP]s masked with that spec never picks one."""
    from conftest import ROOT
    from electra_jax.config import load_config, objective_spec
    from electra_jax.objective import mask_batch

    spec = objective_spec(load_config(str(ROOT / "configs" / "tiny.py")))
    assert set(spec.never_mask_ids) == {PAD, CLS, SEP, MASK}
    ids, mask = _batch(seed=3)
    ids[:, 2::3] = np.where(mask[:, 2::3] == 1, SEP, ids[:, 2::3])  # every third real token a [SEP]
    for i in range(20):
        out = jax.tree.map(np.asarray, mask_batch(jax.random.key(i), {"input_ids": ids, "input_mask": mask}, spec))
        chosen = np.take_along_axis(ids, out.positions, 1)[out.weights > 0]
        assert not np.isin(chosen, [PAD, CLS, SEP, MASK]).any()


def test_num_to_mask_rounds_half_to_even_and_clips():
    """k = clip(round(0.15 x real tokens), 1, N), rounding as tf.round (half to even), [CLS]/[SEP] counted."""
    lengths = np.array([0, 3, 10, 30, 50, 70, 128])  # 0.15 x: 0, 0.45, 1.5, 4.5, 7.5, 10.5, 19.2
    mask = (np.arange(128)[None] < lengths[:, None]).astype(np.int32)
    np.testing.assert_array_equal(num_to_mask(jnp.asarray(mask), 0.15, 19), [1, 1, 2, 4, 8, 10, 19])
    np.testing.assert_array_equal(num_to_mask(jnp.asarray(mask), 0.15, 9), [1, 1, 2, 4, 8, 9, 9])


def test_first_occurrence_and_scatter_by_hand():
    positions = np.array([[3, 1, 3, 2, 1], [4, 4, 4, 0, 0]], np.int32)
    weights = np.array([[1, 1, 1, 1, 0], [0, 1, 1, 0, 0]], np.float32)
    # Row 0: slot 2 repeats slot 0's position; slot 4 is unweighted (and the positions fall, so only
    # equality may count). Row 1: slot 0 is unweighted, so slot 1 is the first weighted slot at 4.
    np.testing.assert_array_equal(first_occurrence(jnp.asarray(positions), jnp.asarray(weights)),
                                  [[True, True, False, True, False], [False, True, False, False, False]])
    ids = np.arange(10, 16, dtype=np.int32)[None].repeat(2, 0)
    tokens = np.array([[91, 92, 93, 94, 95], [81, 82, 83, 84, 85]], np.int32)
    write = np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(scatter_tokens(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(tokens),
                                                 jnp.asarray(write)),
                                  [[10, 95, 94, 91, 14, 15], [10, 11, 12, 13, 82, 15]])


def test_positions_are_uniform_over_the_candidates():
    """With replacement, each slot is a uniform draw over the candidates: 20,000 draws over 6, [UNK]
    (id 1, below the special ids 2-4) among them: only [PAD] [CLS] [SEP] [MASK] are never masked."""
    ids = np.array([[CLS, 1, 11, SEP, 12, 13, 14, 15, SEP, PAD]], np.int32)
    mask = (ids != PAD).astype(np.int32)
    out = _mask(jax.random.key(0), np.repeat(ids, 2000, 0), np.repeat(mask, 2000, 0), mask_prob=0.9, n=10)
    pos = np.asarray(out.positions)[np.asarray(out.weights) > 0]
    freq = np.bincount(pos, minlength=10) / len(pos)
    expected = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0, 0]) / 6
    np.testing.assert_allclose(freq, expected, atol=4 * np.sqrt((1 / 6) * (5 / 6) / len(pos)))


def test_bert_80_10_10_masking():
    """random_token_prob: of the chosen slots (without replacement, so each position is one slot)
    ~80% [MASK], ~10% a uniformly random vocabulary token, ~10% unchanged; nothing else changes."""
    ids, mask = _batch(seed=2, batch=64)
    vocab, counts, random_tokens = 500, np.zeros(3), []
    for i in range(40):
        out = mask_tokens(jax.random.key(i), jnp.asarray(ids), jnp.asarray(mask), mask_prob=0.15,
                          max_predictions=9, mask_id=MASK, never_mask_ids=(CLS, SEP, MASK, PAD),
                          mask_token_prob=0.8, with_replacement=False, random_token_prob=0.1, vocab_size=vocab)
        new, pos, w = np.asarray(out.input_ids), np.asarray(out.positions), np.asarray(out.weights) > 0
        unchosen = np.ones_like(ids, bool)
        for b in range(len(ids)):
            unchosen[b, pos[b][w[b]]] = False
        assert np.array_equal(new[unchosen], ids[unchosen])  # only chosen positions may change
        got, was = np.take_along_axis(new, pos, 1)[w], ids[np.arange(len(ids))[:, None], pos][w]
        is_mask, same = got == MASK, got == was
        counts += [is_mask.sum(), (~is_mask & ~same).sum(), (~is_mask & same).sum()]
        random_tokens += got[~is_mask & ~same].tolist()
    n = counts.sum()
    # A random draw equal to the original token (1/500) shows as unchanged: 0.1 x 1/500 of the slots.
    expected = np.array([0.8, 0.1 * (1 - 1 / vocab), 0.1 + 0.1 / vocab])
    assert np.all(np.abs(counts / n - expected) <= 4 * np.sqrt(expected * (1 - expected) / n)), counts / n
    random_tokens = np.array(random_tokens)
    assert random_tokens.min() >= 0 and random_tokens.max() < vocab
    assert abs(random_tokens.mean() - (vocab - 1) / 2) < 4 * vocab / np.sqrt(12 * len(random_tokens))

