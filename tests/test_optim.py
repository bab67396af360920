"""The original optimizer, written out by hand in numpy, against our optax chain."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from electra_jax.optim import decay_mask, learning_rate_schedule, make_optimizer


def _config(name="electra_adam"):
    c = ml_collections.ConfigDict()
    c.num_train_steps = 10
    c.optim = dict(name=name, learning_rate=0.1, warmup_steps=4, lr_decay_power=1.0, weight_decay=0.01,
                   b1=0.9, b2=0.999, eps=1e-6, grad_clip_norm=1.0, skip_nonfinite=0)
    return c


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_schedule_matches_formula(warmup):
    sched = learning_rate_schedule(0.1, total_steps=10, warmup_steps=warmup)
    for t in [0, 1, 3, 4, 5, 9, 10, 12]:
        expected = 0.1 * (1 - min(t, 10) / 10) * (min(1.0, t / warmup) if warmup else 1.0)
        np.testing.assert_allclose(sched(t), expected, rtol=1e-6, atol=1e-9)


def test_adam_without_bias_correction_defaults_are_the_originals():
    """b1 0.9, b2 0.999, eps 1e-6 (optimization.py): two steps by hand."""
    from electra_jax.optim import scale_by_adam_without_bias_correction

    tx = scale_by_adam_without_bias_correction()
    g1, g2 = np.array([0.5, -2.0, 1e-4]), np.array([0.1, 1.0, -3e-4])
    state = tx.init(jnp.zeros(3))
    u1, state = tx.update(jnp.asarray(g1, jnp.float32), state)
    u2, state = tx.update(jnp.asarray(g2, jnp.float32), state)
    m1, v1 = 0.1 * g1, 0.001 * g1 ** 2
    m2, v2 = 0.9 * m1 + 0.1 * g2, 0.999 * v1 + 0.001 * g2 ** 2
    np.testing.assert_allclose(u1, m1 / (np.sqrt(v1) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(u2, m2 / (np.sqrt(v2) + 1e-6), rtol=1e-5)


def test_decay_mask_skips_layer_norm_and_biases_but_not_embeddings():
    params = {
        "embeddings": {"word_embeddings": 0, "layer_norm": {"scale": 0, "bias": 0}},
        "generator": {"output_bias": 0, "dense": {"kernel": 0, "bias": 0},
                      "encoder": {"layer_0": {"attention_layer_norm": {"scale": 0}}}},
    }
    mask = decay_mask(params)
    assert mask["embeddings"]["word_embeddings"] is True
    assert mask["generator"]["dense"]["kernel"] is True
    assert not any([mask["embeddings"]["layer_norm"]["scale"], mask["embeddings"]["layer_norm"]["bias"],
                    mask["generator"]["output_bias"], mask["generator"]["dense"]["bias"],
                    mask["generator"]["encoder"]["layer_0"]["attention_layer_norm"]["scale"]])


def _reference_steps(params, grads_seq, c):
    """Each optimizer written out by hand: global-norm clip (0: none), Adam moments, decoupled decay
    except biases, the schedule. `electra_adam` is google-research/electra's optimization.py (no bias
    correction); `adamw` and `lamb` bias-correct, and LAMB scales each tensor's update by
    ||param|| / ||update||."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    o = c.optim
    corrected = o.name != "electra_adam"
    for t, grads in enumerate(grads_seq):
        norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
        scale = o.grad_clip_norm / max(norm, o.grad_clip_norm) if o.grad_clip_norm else 1.0
        lr = o.learning_rate * (1 - min(t, c.num_train_steps) / c.num_train_steps) * min(1.0, t / o.warmup_steps)
        for k in p:
            g = grads[k] * scale
            m[k] = o.b1 * m[k] + (1 - o.b1) * g
            v[k] = o.b2 * v[k] + (1 - o.b2) * g * g
            if corrected:
                update = (m[k] / (1 - o.b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - o.b2 ** (t + 1))) + o.eps)
            else:
                update = m[k] / (np.sqrt(v[k]) + o.eps)
            if not k.endswith("bias"):
                update = update + o.weight_decay * p[k]
            if o.name == "lamb":
                update = update * np.linalg.norm(p[k]) / np.linalg.norm(update)
            p[k] = p[k] - lr * update
    return p


@pytest.mark.parametrize("name,clip", [("electra_adam", 1.0), ("electra_adam", 0.0), ("adamw", 1.0),
                                       ("lamb", 1.0)])
def test_optimizers_match_hand_written_updates(name, clip):
    """grad_clip_norm 1.0 clips (the original); 0 turns clipping off (the reference then never scales)."""
    c = _config(name)
    c.optim.grad_clip_norm = clip
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
              "bias": rng.normal(size=(4,)).astype(np.float32)}
    # Large gradients so that clipping is active on some steps and not on others.
    grads_seq = [{k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
                 for s in (3.0, 0.1, 2.0, 0.05, 1.0, 0.2)]
    tx, _ = make_optimizer(c)
    state = tx.init(params)
    ours = params
    for grads in grads_seq:
        updates, state = tx.update(grads, state, ours)
        ours = optax.apply_updates(ours, updates)
    expected = _reference_steps(params, grads_seq, c)
    for k in params:
        assert not np.allclose(expected[k], params[k])  # it moved
        np.testing.assert_allclose(ours[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_skip_nonfinite_drops_bad_steps_and_counts_them():
    c = _config()
    c.optim.skip_nonfinite = 2
    tx, _ = make_optimizer(c)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    good = {"w": jnp.full(3, 0.5)}
    bad = {"w": jnp.array([1.0, jnp.nan, 0.0])}
    for grads, expect_zero in [(good, True), (bad, True), (good, False), (bad, True), (bad, True)]:
        updates, state = tx.update(grads, state, params)
        # step 0 has lr 0 (warm-up); a skipped step changes nothing
        assert bool(jnp.all(updates["w"] == 0)) == expect_zero
    assert int(state.total_notfinite) == 3 and int(state.notfinite_count) == 2
    updates, state = tx.update(bad, state, params)  # a third in a row is no longer skipped
    assert not bool(jnp.all(jnp.isfinite(updates["w"])))


def test_skip_nonfinite_1_skips_one_bad_step():
    c = _config()
    c.optim.update(skip_nonfinite=1, warmup_steps=0)
    tx, _ = make_optimizer(c)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    bad = {"w": jnp.array([1.0, jnp.nan, 0.0])}
    updates, state = tx.update(bad, state, params)
    assert bool(jnp.all(updates["w"] == 0)) and int(state.total_notfinite) == 1  # skipped
    updates, state = tx.update(bad, state, params)  # the second in a row is applied
    assert not bool(jnp.all(jnp.isfinite(updates["w"])))
