"""Objective pieces against numpy, and where gradients do and do not flow."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import config as config_lib
from electra_jax.model import Electra, init_params
from electra_jax.objective import disc_loss, electra_loss, mlm_loss, replace_tokens, sample_tokens, summarize


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_mlm_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    nll = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    expected = (weights * nll).sum() / (weights.sum() + 1e-6)
    got, _ = mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_disc_loss_matches_numpy():
    logits = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, 0.0, 1.0, 9.0]], np.float32)
    labels = np.array([[1, 0, 0, 1], [0, 0, 1, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = (ce * mask).sum() / (mask.sum() + 1e-6)
    np.testing.assert_allclose(disc_loss(logits, labels, mask), expected, rtol=1e-6)


def test_both_losses_add_the_originals_1e_6_to_their_denominators():
    """One slot, one token, logits 0: CE = log 4 and log 2 exactly, divided by 1 + 1e-6 as the original's
    `tf.reduce_sum(weights) + 1e-6` (a sign flip there is 12 float32 ulps off)."""
    got, _ = mlm_loss(jnp.zeros((1, 1, 4)), jnp.array([[2]]), jnp.ones((1, 1)))
    np.testing.assert_allclose(got, np.log(4) / (1 + 1e-6), rtol=3e-7)
    got = disc_loss(jnp.zeros((1, 1)), jnp.array([[1]]), jnp.ones((1, 1)))
    np.testing.assert_allclose(got, np.log(2) / (1 + 1e-6), rtol=3e-7)


@pytest.mark.parametrize("name", ["multinomial", "categorical"])  # after and before "gumbel" in order
def test_an_unknown_sampler_is_refused(name):
    with pytest.raises(ValueError, match=f"unknown sampler '{name}'"):
        sample_tokens(jax.random.key(0), jnp.zeros((1, 2, 5)), sampler=name)


@pytest.mark.parametrize("sampler", ["gumbel", "inverse_cdf"])
def test_disallow_correct_never_draws_the_true_token(sampler):
    logits = np.random.default_rng(1).normal(size=(4, 6, 50)).astype(np.float32) * 3
    targets = np.argmax(logits, -1)
    peaked = logits + 50 * np.eye(50, dtype=np.float32)[targets]
    drawn = sample_tokens(jax.random.key(5), peaked, 1.0, jnp.asarray(targets), sampler=sampler)
    assert not np.any(np.asarray(drawn) == targets)


def _np_inverse_cdf(rng, logits, block=256):
    """numpy's float64 inverse CDF over blocks, then inside the drawn block, from the same two uniforms
    per slot that the sampler draws."""
    *lead, vocab = logits.shape
    n_blocks = -(-vocab // block)
    u_block, u_token = np.asarray(jax.random.uniform(rng, (2, *lead, 1), jnp.float32), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = np.pad(p / p.sum(-1, keepdims=True), [(0, 0)] * len(lead) + [(0, n_blocks * block - vocab)])
    p = p.reshape(*lead, n_blocks, block)
    sums = p.sum(-1)
    chosen = np.argmax(np.cumsum(sums, -1) > u_block * sums.sum(-1, keepdims=True), -1)
    inside = np.take_along_axis(p, chosen[..., None, None], -2)[..., 0, :]
    token = np.argmax(np.cumsum(inside, -1) > u_token * inside.sum(-1, keepdims=True), -1)
    return chosen * block + token


def test_inverse_cdf_sampling_matches_numpy():
    """The vocabulary (600) is not a multiple of the 256-entry block: the padded tail is exercised."""
    rng = jax.random.key(7)
    logits = np.random.default_rng(2).normal(size=(3, 5, 600)).astype(np.float32) * 2
    np.testing.assert_array_equal(sample_tokens(rng, logits, 0.5, sampler="inverse_cdf"),
                                  _np_inverse_cdf(rng, logits.astype(np.float64) / 0.5))
    # Logits of ~100 (exp would overflow float32 unless the maximum is taken off first).
    np.testing.assert_array_equal(sample_tokens(rng, logits + 100, 0.5, sampler="inverse_cdf"),
                                  _np_inverse_cdf(rng, (logits + 100).astype(np.float64) / 0.5))


# (u_block, u_token) -> the token: u at the very top of its range (which rounding of u x total can
# reach) must still pick a token of the chosen block, and the last block's last real token, never an id
# of the next block or past the vocabulary (300 ids: blocks 0-255 and 256-299 + 212 padding).
@pytest.mark.parametrize("u, token", [((0.0, 1.0), 255), ((1.0, 0.0), 256), ((1.0, 1.0), 299), ((0.0, 0.0), 0)])
def test_inverse_cdf_stays_in_its_block_and_vocabulary_at_the_top_of_u(monkeypatch, u, token):
    def top_of_range(rng, shape, dtype=jnp.float32):
        assert shape == (2, 1, 1)  # one uniform for the block, one inside it
        return jnp.asarray(u, dtype).reshape(shape)

    monkeypatch.setattr(jax.random, "uniform", top_of_range)
    got = sample_tokens(jax.random.key(0), jnp.zeros((1, 300)), sampler="inverse_cdf")
    assert got.tolist() == [token]


def test_a_uniform_draw_of_exactly_zero_samples_no_impossible_token(monkeypatch):
    """jax.random.uniform returns exactly 0 with probability 2^-23 per draw: several times a step for
    Gumbel over a 30,522-token vocabulary. Gumbel: u = 0 must give a low score, not NaN (which argmax
    would pick). Inverse CDF: u = 0 must skip leading tokens of probability 0 (a disallowed token)."""
    u = jnp.full((1, 5), 0.5).at[0, 2].set(0.0)  # token 2 drew 0; the others tie, so argmax is token 0
    monkeypatch.setattr(jax.random, "uniform", lambda rng, shape, dtype=jnp.float32: u.reshape(shape))
    assert sample_tokens(jax.random.key(0), jnp.zeros((1, 5)), sampler="gumbel").tolist() == [0]
    monkeypatch.setattr(jax.random, "uniform", lambda rng, shape, dtype=jnp.float32: jnp.zeros(shape, dtype))
    got = sample_tokens(jax.random.key(0), jnp.zeros((1, 5)), disallow=jnp.array([0]), sampler="inverse_cdf")
    assert got.tolist() == [1]


@pytest.mark.parametrize("sampler", ["gumbel", "inverse_cdf"])
def test_samplers_draw_from_the_tempered_softmax(sampler):
    """100,000 draws from 300 entries of which 296 have probability 0, at temperature 2 (logits are
    2 log p, so softmax(logits / 2) = p): frequencies within 4 standard errors of p, and no
    zero-probability entry is ever drawn."""
    probs = np.zeros(300)
    probs[[0, 1, 2, 299]] = [0.5, 0.25, 0.125, 0.125]
    with np.errstate(divide="ignore"):
        logits = jnp.asarray(2 * np.log(probs), jnp.float32)
    n = 100_000
    drawn = np.asarray(sample_tokens(jax.random.key(3), jnp.broadcast_to(logits, (n, 300)), 2.0, sampler=sampler))
    freq = np.bincount(drawn, minlength=300) / n
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))
    assert set(np.unique(drawn)) == {0, 1, 2, 299}
    # The default temperature is 1: log p itself.
    drawn = np.asarray(sample_tokens(jax.random.key(4), jnp.broadcast_to(logits / 2, (n, 300)), sampler=sampler))
    np.testing.assert_allclose(np.bincount(drawn, minlength=300) / n, probs, atol=4 * np.sqrt(0.25 / n))


def test_replace_tokens_labels():
    ids = np.array([[2, 10, 11, 12, 13, 3]], np.int32)
    positions = np.array([[1, 2, 4, 4, 0]], np.int32)
    weights = np.array([[1, 1, 1, 1, 0]], np.float32)
    sampled = np.array([[10, 99, 77, 55, 66]], np.int32)  # slot 0 samples the original token
    corrupted, is_fake = replace_tokens(ids, positions, weights, sampled)
    # Position 4 is drawn twice and written once, from its first slot; slot 4 has weight 0.
    np.testing.assert_array_equal(corrupted, [[2, 10, 99, 12, 77, 3]])
    np.testing.assert_array_equal(is_fake, [[False, False, True, False, True, False]])


def _tiny(tiny_config):
    spec = config_lib.model_spec(tiny_config)
    model = Electra(spec)
    ospec = config_lib.objective_spec(tiny_config)
    params = nn.unbox(init_params(model, jax.random.key(0), 64, ospec.max_predictions))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 2048, (4, 64)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)}
    return model, ospec, params, batch


@pytest.fixture(scope="module")
def loss_grads():
    """Gradients of the MLM loss and of the disc loss separately, from one compiled function."""
    from electra_jax.config import load_config

    from conftest import ROOT

    model, ospec, params, batch = _tiny(load_config(str(ROOT / "configs" / "tiny.py")))

    def both_losses(p):
        _, metrics = electra_loss(p, batch, jax.random.key(1), model=model, spec=ospec)
        return metrics["mlm_loss"][0], metrics["disc_loss"][0]

    return jax.tree.map(np.asarray, jax.jit(jax.jacrev(both_losses))(params))


def test_disc_loss_gives_generator_no_gradient(loss_grads):
    _, from_disc = loss_grads
    gen_grads = jax.tree.leaves(from_disc["generator"])
    assert gen_grads and all(np.all(g == 0) for g in gen_grads)
    # ...while the shared embeddings and the discriminator do learn from it.
    assert np.abs(from_disc["embeddings"]["word_embeddings"]).sum() > 0
    assert np.abs(from_disc["discriminator"]["dense"]["kernel"]).sum() > 0


def test_shared_embeddings_get_gradient_from_both_losses(loss_grads):
    from_mlm, from_disc = loss_grads
    for grads in (from_mlm, from_disc):
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            assert np.abs(grads["embeddings"][name]).sum() > 0
        assert np.abs(grads["embeddings"]["layer_norm"]["scale"]).sum() > 0
    # The MLM loss does not reach the discriminator.
    assert all(np.all(g == 0) for g in jax.tree.leaves(from_mlm["discriminator"]))


def test_electra_loss_matches_numpy_recomputation(tiny_config):
    """Rebuild the loss from the model's logits with numpy: masking, labels and both losses."""
    model, ospec, params, batch = _tiny(tiny_config)
    batch = {k: v.copy() for k, v in batch.items()}
    # A generator that favours token 2000, every other token 2000: some samples are right (see below).
    params = {**params, "generator": {**params["generator"],
                                      "output_bias": params["generator"]["output_bias"].at[2000].set(8.0)}}
    batch["input_ids"][:, 1:-1:2] = 2000
    batch["input_ids"][1, 39], batch["input_ids"][1, 40:], batch["input_mask"][1, 40:] = 3, 0, 0  # padding
    rng = jax.random.key(3)
    loss, metrics = jax.jit(functools.partial(electra_loss, model=model, spec=ospec, deterministic=True))(
        params, batch, rng)

    from electra_jax.masking import mask_tokens

    k_mask, _, k_sample, _ = jax.random.split(rng, 4)
    m = mask_tokens(k_mask, batch["input_ids"], batch["input_mask"], mask_prob=ospec.mask_prob,
                    max_predictions=ospec.max_predictions, mask_id=ospec.mask_id,
                    never_mask_ids=ospec.never_mask_ids, mask_token_prob=ospec.mask_token_prob,
                    with_replacement=ospec.with_replacement)
    ids, seg, mask = batch["input_ids"], batch["segment_ids"], batch["input_mask"]
    gen_logits = np.asarray(model.apply({"params": params}, m.input_ids, seg, mask, m.positions,
                                        method=Electra.generator_logits), np.float64)
    w, targets, pos = np.asarray(m.weights), np.asarray(m.original_ids), np.asarray(m.positions)
    # k = min(round(0.15 x 64 real tokens) = 10, N = int(0.155 x 64) = 9 slots) = 9 per full row; the
    # padded row has 40 real tokens: round(6.0) = 6.
    assert ospec.max_predictions == 9
    np.testing.assert_array_equal(w.sum(1), [9, 6, 9, 9])
    np.testing.assert_array_equal(targets[w > 0], np.take_along_axis(ids, pos, 1)[w > 0])
    nll = -np.take_along_axis(_np_log_softmax(gen_logits), targets[..., None], -1)[..., 0]
    mlm = (w * nll).sum() / (w.sum() + 1e-6)
    sampled = _np_inverse_cdf(k_sample, gen_logits)
    corrupted = ids.copy()
    for b in range(ids.shape[0]):
        seen = set()
        for j in range(pos.shape[1]):
            if w[b, j] > 0 and pos[b, j] not in seen:
                seen.add(pos[b, j])
                corrupted[b, pos[b, j]] = sampled[b, j]
    labels = (corrupted != ids).astype(np.float64)
    disc_logits = np.asarray(model.apply({"params": params}, corrupted, seg, mask,
                                         method=Electra.discriminator_logits), np.float64)
    p = 1 / (1 + np.exp(-disc_logits))
    disc = (-(labels * np.log(p) + (1 - labels) * np.log(1 - p)) * mask).sum() / (mask.sum() + 1e-6)
    np.testing.assert_allclose(metrics["mlm_loss"][0], mlm, rtol=1e-5)
    np.testing.assert_allclose(metrics["disc_loss"][0], disc, rtol=1e-5)
    np.testing.assert_allclose(loss, mlm + 50 * disc, rtol=1e-5)
    np.testing.assert_allclose(metrics["replaced_fraction"][0], labels.sum())
    # The training accuracies, from the numpy quantities above ([numerator, denominator] pairs).
    real = mask.astype(bool)
    pred = (disc_logits > 0) & real
    fake = labels.astype(bool) & real
    expected = {"mlm_accuracy": ((w * (gen_logits.argmax(-1) == targets)).sum(), w.sum()),
                "sampled_accuracy": ((w * (sampled == targets)).sum(), w.sum()),
                "disc_accuracy": ((pred == fake)[real].sum(), real.sum()),
                "disc_precision": ((pred & fake).sum(), pred.sum()),
                "disc_recall": ((pred & fake).sum(), fake.sum())}
    assert expected["sampled_accuracy"][0] > 0.1 * expected["sampled_accuracy"][1]
    for name, pair in expected.items():
        np.testing.assert_allclose(metrics[name], pair, rtol=1e-6, err_msg=name)
    # What the loop logs: each pair's ratio.
    logged = summarize(metrics)
    for name, value in {"loss": mlm + 50 * disc, "mlm_loss": mlm, "disc_loss": disc,
                        "sampled_accuracy": expected["sampled_accuracy"][0] / expected["sampled_accuracy"][1]}.items():
        np.testing.assert_allclose(logged[name], value, rtol=1e-5, err_msg=name)


def test_a_discriminator_at_exactly_zero_predicts_nothing_replaced(tiny_config):
    """The original predicts round((sign(logit) + 1) / 2), and tf.round(0.5) = 0 (half to even): a logit of
    exactly 0 says "original". With nothing predicted replaced, precision is 0 (tf.metrics' safe
    division), in the training metrics and in eval."""
    from electra_jax.objective import eval_metrics, eval_statistics

    model, ospec, params, batch = _tiny(tiny_config)
    params = {**params, "discriminator": {**params["discriminator"],
                                          "dense_prediction": jax.tree.map(jnp.zeros_like, params["discriminator"]["dense_prediction"])}}
    rng = jax.random.key(3)
    _, metrics = electra_loss(params, batch, rng, model=model, spec=ospec, deterministic=True)
    replaced = float(metrics["replaced_fraction"][0])
    assert replaced > 0
    np.testing.assert_array_equal(metrics["disc_precision"], [0, 0])
    np.testing.assert_array_equal(metrics["disc_recall"], [0, replaced])
    np.testing.assert_allclose(summarize(metrics)["disc_precision"], 0.0)
    got = eval_metrics(eval_statistics(params, batch, rng, model=model, spec=ospec))
    assert got["disc_precision"] == 0.0 and got["disc_recall"] == 0.0
    np.testing.assert_allclose(got["disc_accuracy"], 1 - replaced / batch["input_mask"].sum(), rtol=1e-6)


def test_the_training_loss_applies_dropout_unless_told_not_to(tiny_config):
    """train_step calls electra_loss without `deterministic`: the default must be dropout on (tiny: 0.1)."""
    model, ospec, params, batch = _tiny(tiny_config)
    assert tiny_config.model.dropout_rate > 0
    def loss(**deterministic):
        return float(electra_loss(params, batch, jax.random.key(3), model=model, spec=ospec, **deterministic)[0])

    assert loss() == loss(deterministic=False) != loss(deterministic=True)


def test_a_saturated_discriminator_still_counts_in_the_auc(tiny_config):
    """A logit of 30 gives a sigmoid of exactly 1.0 in float32, one past the last AUC bin: every real
    token must still be counted (in the top bin), all tied, so the AUC is 0.5."""
    from electra_jax.objective import eval_metrics, eval_statistics

    model, ospec, params, batch = _tiny(tiny_config)
    head = params["discriminator"]["dense_prediction"]
    params = {**params, "discriminator": {**params["discriminator"], "dense_prediction": {
        "kernel": jnp.zeros_like(head["kernel"]), "bias": jnp.full_like(head["bias"], 30.0)}}}
    assert float(jax.nn.sigmoid(jnp.float32(30.0))) == 1.0
    stats = eval_statistics(params, batch, jax.random.key(3), model=model, spec=ospec)
    counted = np.asarray(stats["auc_positive"]) + np.asarray(stats["auc_negative"])
    assert counted[-1] == batch["input_mask"].sum() and counted.sum() == counted[-1]
    assert eval_metrics(stats)["disc_auc"] == pytest.approx(0.5)


def test_eval_metrics_from_hand_counted_sums():
    """Counts of exactly one (one masked slot, one token predicted replaced) are ratios like any other;
    AUC from two bins: 2 positives above 1 of 3 negatives, tied with 2 -> (2 x (1 + 0.5 x 2)) / 6."""
    from electra_jax.objective import eval_metrics

    auc_positive, auc_negative = np.zeros(1000), np.zeros(1000)
    auc_positive[900], auc_negative[100], auc_negative[900] = 2, 1, 2
    got = eval_metrics({"mlm_correct": 1, "mlm_weight": 1, "mlm_nll_sum": 0.5, "sampled_correct": 1,
                        "disc_loss_sum": 0.3, "examples": 1, "disc_correct": 4, "tokens": 5,
                        "true_positives": 1, "predicted_fake": 1, "true_fake": 2,
                        "auc_positive": auc_positive, "auc_negative": auc_negative})
    assert got == pytest.approx({"masked_lm_accuracy": 1.0, "masked_lm_loss": 0.5, "sampled_masked_lm_accuracy": 1.0,
                                 "disc_loss": 0.3, "disc_auc": 4 / 6, "disc_accuracy": 0.8,
                                 "disc_precision": 1.0, "disc_recall": 0.5})


def test_names_typed_on_the_command_line_work_like_literals(tiny_config):
    """A --config override makes a new str at run time (not an interned literal): the sampler and the
    objective's name must be compared by value."""
    import dataclasses

    typed = "".join  # builds the str at run time, as argv parsing does
    logits = jnp.zeros((1, 2, 5))
    for sampler in ("gumbel", "inverse_cdf"):
        assert sample_tokens(jax.random.key(0), logits, sampler=typed(list(sampler))).shape == (1, 2)
    tiny_config.objective.name = "mlm"
    model, ospec, params, batch = _tiny(tiny_config)
    ospec = dataclasses.replace(ospec, name=typed(["m", "l", "m"]))
    _, metrics = electra_loss(params, batch, jax.random.key(3), model=model, spec=ospec, deterministic=True)
    assert "disc_loss" not in metrics and "mlm_loss" in metrics


def _exact_auc(labels, scores):
    """Mann-Whitney AUC with ties counted one half: P(score of a positive > score of a negative)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def test_eval_metrics_match_a_numpy_reference(tiny_config):
    from electra_jax.objective import eval_metrics, eval_statistics, forward

    model, ospec, params, batch = _tiny(tiny_config)
    batch = {k: v.copy() for k, v in batch.items()}
    # An untrained generator is never right: favour token 2000 (output bias) and make every other token
    # 2000, so about half the slots are predicted correctly and the accuracies are not all 0 (a high id:
    # most other targets are below the prediction, so "==" is not confused with ">=").
    params = jax.tree.map(lambda x: x, params)
    params["generator"]["output_bias"] = params["generator"]["output_bias"].at[2000].set(8.0)
    batch["input_ids"][:, 1:-1:2] = 2000
    batch["input_mask"][1, 40:] = 0  # padding inside a real row
    batch["input_ids"][1, 40:] = 0
    for k in batch:  # an all-padding row, as the eval reader appends: it must count nowhere
        batch[k][3] = 0
    rng = jax.random.key(11)
    stats = jax.jit(functools.partial(eval_statistics, model=model, spec=ospec))(params, batch, rng)
    got = eval_metrics(stats)

    # The masking and the samples are forward's (tested on their own); logits, NLL, labels and every
    # metric are recomputed here from the model and numpy.
    f = jax.tree.map(np.asarray, forward(params, batch, rng, model=model, spec=ospec, deterministic=True))
    w, targets, pos = f.masked.weights, f.masked.original_ids, f.masked.positions
    ids, seg = batch["input_ids"], batch["segment_ids"]
    gen_logits = np.asarray(model.apply({"params": params}, f.masked.input_ids, seg, batch["input_mask"], pos,
                                        method=Electra.generator_logits), np.float64)
    nll = -np.take_along_axis(_np_log_softmax(gen_logits), targets[..., None], -1)[..., 0]
    corrupted, written = ids.copy(), set()
    for b, j in zip(*np.nonzero(w)):  # a position drawn twice keeps its first slot's sample
        if (b, pos[b, j]) not in written:
            written.add((b, pos[b, j]))
            corrupted[b, pos[b, j]] = f.sampled[b, j]
    mask = batch["input_mask"].astype(bool)
    real = mask.any(1)
    labels = (corrupted != ids) & mask
    disc_logits = np.asarray(model.apply({"params": params}, corrupted, seg, batch["input_mask"],
                                         method=Electra.discriminator_logits), np.float64)
    sigmoid = 1 / (1 + np.exp(-disc_logits))
    probs = sigmoid * mask
    pred = (disc_logits > 0) & mask
    ce = -(labels * np.log(np.clip(sigmoid, 1e-30, 1)) + (~labels) * np.log(np.clip(1 - sigmoid, 1e-30, 1)))
    per_example = (ce * mask).sum(1) / (mask.sum(1) + 1e-6)
    expected = {
        "masked_lm_accuracy": (w * (gen_logits.argmax(-1) == targets)).sum() / w.sum(),
        "masked_lm_loss": (w * nll).sum() / w.sum(),
        "sampled_masked_lm_accuracy": (w * (f.sampled == targets)).sum() / w.sum(),
        "disc_loss": per_example[real].mean(),
        "disc_accuracy": (pred == labels)[mask].mean(),
        "disc_precision": (pred & labels).sum() / pred.sum(),
        "disc_recall": (pred & labels).sum() / labels.sum(),
        "disc_auc": _exact_auc(labels[real].ravel(), probs[real].ravel()),
    }
    assert 0.2 < expected["masked_lm_accuracy"] < 0.8 and expected["sampled_masked_lm_accuracy"] > 0.1
    for name, value in expected.items():
        tol = 2e-3 if name == "disc_auc" else 1e-5  # AUC is binned (1000 bins), like tf.metrics.auc
        np.testing.assert_allclose(got[name], value, rtol=tol, atol=tol, err_msg=name)

    # Statistics are sums: two halves add up to the whole batch.
    halves = [jax.jit(functools.partial(eval_statistics, model=model, spec=ospec))(
        params, {k: v[sl] for k, v in batch.items()}, rng) for sl in (slice(0, 2), slice(2, 4))]
    summed = jax.tree.map(lambda a, b: np.asarray(a) + np.asarray(b), *halves)
    assert summed["examples"] == 3 and summed["tokens"] == mask.sum()


def test_mlm_objective_is_the_full_size_masked_lm_against_pytorch(tiny_config):
    """objective.name=mlm (the original's BERT baseline): one discriminator-sized model, no
    discriminator parameters, loss = gen_weight x MLM. Its loss equals the cross-entropy, computed in
    numpy, of transformers' full-size ElectraForMaskedLM holding the same weights at our masked slots."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.flops import train_flops_per_sequence
    from electra_jax.hf import hf_config, to_hf_state_dict
    from electra_jax.objective import forward

    tiny_config.objective.name = "mlm"
    tiny_config.objective.gen_weight = 2.0
    config_lib.validate(tiny_config)
    spec, objective = config_lib.model_spec(tiny_config), config_lib.objective_spec(tiny_config)
    assert spec.generator == spec.discriminator  # 64 wide, 2 heads, 2 layers: what gets fine-tuned
    model = Electra(spec)
    params = jax.jit(lambda k: nn.unbox(init_params(model, k, 32, 2)))(jax.random.key(0))
    assert sorted(params) == ["embeddings", "generator"]
    assert params["generator"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].shape == (64, 2, 32)

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 2048, (4, 32)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.zeros_like(ids), "input_mask": jnp.ones_like(ids)}
    f = forward(params, batch, jax.random.key(1), model=model, spec=objective, deterministic=True)
    assert f.sampled is None and f.disc_logits is None

    hf = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**hf_config(spec, "generator"))).eval()
    missing, unexpected = hf.load_state_dict(
        {k: torch.tensor(np.asarray(v)) for k, v in to_hf_state_dict(params, spec, "generator").items()},
        strict=False)
    assert not unexpected and set(missing) <= {"generator_lm_head.weight"}  # tied to the word table
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(np.asarray(f.masked.input_ids), dtype=torch.long)).logits.double().numpy()
    pos, w = np.asarray(f.masked.positions), np.asarray(f.masked.weights)
    slots = np.take_along_axis(logits, pos[..., None], 1)
    nll = -np.take_along_axis(_np_log_softmax(slots), ids[np.arange(4)[:, None], pos][..., None], -1)[..., 0]
    mlm = (w * nll).sum() / w.sum()
    np.testing.assert_allclose(float(f.mlm_loss), mlm, rtol=2e-5)
    np.testing.assert_allclose(float(f.loss), 2.0 * mlm, rtol=2e-5)

    loss, metrics = electra_loss(params, batch, jax.random.key(1), model=model, spec=objective, deterministic=True)
    assert sorted(metrics) == ["loss", "mlm_accuracy", "mlm_loss"]
    # FLOPs: the full-size masked LM alone, i.e. the ELECTRA total minus its discriminator's share.
    electra = config_lib.model_spec(config_lib.load_config("tiny"))
    h, s = 64, 32
    disc_only = 6 * 2 * (4 * h * h + 2 * h * 256) * s + 12 * 2 * s * h * s + 6 * 32 * h * s + s * 6 * (h * h + h)
    gen_full = disc_only - s * 6 * (h * h + h) + 9 * 6 * (h * 32 + 32 * 2048)
    assert train_flops_per_sequence(spec, s, 9) == gen_full
    assert train_flops_per_sequence(electra, s, 9) > gen_full  # the small generator + the discriminator


def test_an_unknown_objective_and_too_many_random_tokens_are_refused(tiny_config):
    tiny_config.objective.name = "bert"
    with pytest.raises(config_lib.ConfigError, match="objective.name"):
        config_lib.validate(tiny_config)
    tiny_config.objective.name = "mlm"
    tiny_config.objective.random_token_prob = 0.2  # with mask_token_prob 0.85: 105% of the slots
    with pytest.raises(config_lib.ConfigError, match=r"random_token_prob.*0.15"):
        config_lib.validate(tiny_config)


@pytest.mark.slow
def test_uniform_generator_draws_fakes_uniformly_and_trains_only_the_discriminator(tiny_config):
    """objective.uniform_generator, the original's ablation (`uniform_generator`: all-zero generator
    logits over the whole vocabulary): no generator parameters, MLM loss log V (a constant, no
    gradient), every vocabulary id equally likely as a fake, loss = gen_weight log V + 50 x the BCE
    (numpy), and the FLOPs of the discriminator alone (by hand)."""
    from scipy import stats

    from electra_jax.flops import train_flops_per_sequence
    from electra_jax.objective import forward

    vocab = 32
    tiny_config.model.vocab_size = vocab
    tiny_config.objective.uniform_generator = True
    config_lib.validate(tiny_config)
    spec, objective = config_lib.model_spec(tiny_config), config_lib.objective_spec(tiny_config)
    model = Electra(spec)
    params = jax.jit(lambda k: nn.unbox(init_params(model, k, 64, objective.max_predictions)))(jax.random.key(0))
    assert sorted(params) == ["discriminator", "embeddings"]

    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, (64, 64)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = np.ones_like(ids)
    mask[:8, 40:] = 0  # some padding, which the BCE must leave out
    batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.zeros_like(ids), "input_mask": jnp.asarray(mask)}
    run = jax.jit(lambda p, k: forward(p, batch, k, model=model, spec=objective))
    draws = []
    for seed in range(4):
        f = run(params, jax.random.key(seed))
        # a float32 mean over the masked slots: its rounding (~1e-6) depends on the CPU's reduction order
        np.testing.assert_allclose(float(f.mlm_loss), np.log(vocab), rtol=1e-5)
        logits, fake = np.asarray(f.disc_logits, np.float64), np.asarray(f.is_fake)
        bce = np.logaddexp(0, logits) - fake * logits
        disc = (bce * mask).sum() / mask.sum()
        np.testing.assert_allclose(float(f.disc_loss), disc, rtol=1e-5)
        np.testing.assert_allclose(float(f.loss), np.log(vocab) + 50 * disc, rtol=1e-5)
        draws.append(np.asarray(f.sampled)[np.asarray(f.masked.weights) > 0])
    counts = np.bincount(np.concatenate(draws), minlength=vocab)
    assert counts.sum() > 1500 and counts.min() > 0  # special ids too, as the original's zero logits
    assert stats.chisquare(counts).pvalue > 1e-4

    grads = jax.grad(lambda p: forward(p, batch, jax.random.key(0), model=model, spec=objective).loss)(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(grads["discriminator"]["encoder"]["layer_0"]["output"]["kernel"]).sum() > 0

    h, s = 64, 32
    disc_only = 6 * 2 * (4 * h * h + 2 * h * 256) * s + 12 * 2 * s * h * s + 6 * 32 * h * s + s * 6 * (h * h + h)
    assert train_flops_per_sequence(spec, s, 9) == disc_only


def test_a_uniform_generator_is_refused_with_the_mlm_objective(tiny_config):
    tiny_config.objective.uniform_generator = True
    tiny_config.objective.name = "mlm"
    with pytest.raises(config_lib.ConfigError, match="objective.uniform_generator"):
        config_lib.validate(tiny_config)
    with pytest.raises(config_lib.ConfigError, match="uniform_generator"):  # typed on the command line
        config_lib.load_config("tiny", ["--config.objective.uniform_generator=yes"])
