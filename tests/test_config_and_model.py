"""Derived values and parameter counts against the paper; bad configs fail early and clearly;
scan and remat compute the same numbers as the plain stack."""

import dataclasses
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import ROOT
from electra_jax import config as config_lib
from electra_jax.model import Electra, init_params, stack_layers, unstack_layers
from electra_jax.train import setup


def _load(name, *overrides):
    return config_lib.load_config(str(ROOT / "configs" / f"{name}.py"), list(overrides))


def _count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name,slots,gen,disc_params,gen_extra", [
    # reference section 4: slots N, generator (hidden, heads, ffn, layers), disc params w/o head, gen extra
    ("small", 19, (64, 1, 256, 12), 13.48e6, 0.65e6),
    ("base", 79, (256, 4, 1024, 12), 108.9e6, 9.9e6),
    ("large", 130, (256, 4, 1024, 24), 334.1e6, 19.5e6),
])
def test_presets_match_the_paper(name, slots, gen, disc_params, gen_extra):
    config = _load(name)
    assert config_lib.max_predictions_per_seq(config) == slots
    g = config_lib.model_spec(config).generator
    assert (g.hidden_size, g.num_heads, g.intermediate_size, g.num_layers) == gen
    shapes = jax.eval_shape(lambda: nn.unbox(init_params(Electra(config_lib.model_spec(config)),
                                                          jax.random.key(0), 8, 2)))
    disc = _count(shapes["embeddings"]) + _count(shapes["discriminator"]["encoder"])
    assert abs(disc - disc_params) / disc_params < 0.005
    assert abs(_count(shapes["generator"]) - gen_extra) / gen_extra < 0.05


def test_small_plus_generator_is_as_wide_as_discriminator():
    g = config_lib.model_spec(_load("small_plus")).generator
    assert (g.hidden_size, g.num_heads, g.intermediate_size) == (256, 4, 1024)


@pytest.mark.parametrize("override,field", [
    ("--config.model.num_heads=3", "model.hidden_size"),
    ("--config.data.seq_len=1024", "data.seq_len"),
    ("--config.batch_size=12", "batch_size"),
    ("--config.optim.name=sgd", "optim.name"),
    ("--config.objective.mask_prob=1.5", "objective.mask_prob"),
    ("--config.objective.mask_prob=0.0", "objective.mask_prob"),
    ("--config.model.dtype=float16", "model.dtype"),
    ("--config.model.generator_hidden_fraction=0.001", "model.generator_hidden_fraction"),
    ("--config.model.attention=fused", "model.attention"),  # with attention dropout 0.1
    ("--config.model.attention=flash", "model.attention"),
    ("--config.objective.sampler=multinomial", "objective.sampler"),
    ("--config.optim.grad_clip_norm=-1.0", "optim.grad_clip_norm"),
])
def test_bad_config_fails_before_compiling(override, field):
    config = _load("tiny", override)
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
        setup(config, jax.devices())  # 8 devices: batch 12 does not split 8 ways


def test_cli_reports_bad_input_in_one_line():
    for args, needle in ((["--config.model.num_heads=3"], "num_heads=3"),
                         (["--config.model.no_such_field=1"], "no_such_field"),
                         (["--config.optim.name=sgd"], "'sgd' is not one of")):
        out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench", "--config",
                              str(ROOT / "configs" / "tiny.py"), *args], capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench", "--config", "nope.py"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such file" in out.stderr and "presets: base" in out.stderr


@pytest.mark.parametrize("policy,attention", [("none", "xla"), ("full", "xla"), ("dots", "xla"),
                                              ("dots", "fused"), ("dots", "splash")])
def test_scan_and_remat_compute_the_same_numbers(tiny_config, policy, attention):
    """The variant (scanned, rematerialised, fused attention) against the plain stack, with hidden
    dropout on (attention-probability dropout off where a fused kernel is compared). Splash is TPU's
    Pallas kernel, run here in Pallas' interpret mode, at a length of 100 (padded inside to its block of
    128 and cut back), with padded rows."""
    if attention != "xla":
        tiny_config.model.attention_dropout_rate = 0.0
    spec = config_lib.model_spec(tiny_config)
    seq = 100 if attention == "splash" else 16
    ids = np.random.default_rng(0).integers(5, 2048, (2, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    mask[0, seq // 2:] = 0
    plain = Electra(spec)
    params = nn.unbox(init_params(plain, jax.random.key(0), seq, 4))
    variant = Electra(dataclasses.replace(spec, scan_layers=True, remat_policy=policy, attention=attention))

    def loss(model, p):  # with dropout on: per-layer keys make it layout-independent
        logits = model.apply({"params": p}, ids, np.zeros_like(ids), mask, False,
                             method=Electra.discriminator_logits, rngs={"dropout": jax.random.key(3)})
        return (logits * mask).sum()

    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
    l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(variant, p)))(stack_layers(params))
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(stack_layers(g1)), jax.tree.leaves(g2)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_state(tiny_config):
    import jax.numpy as jnp

    from electra_jax.data.synthetic import synthetic_batch

    tiny_config.model.dtype = "bfloat16"
    s = setup(tiny_config, jax.devices()[:1])
    init_rng, train_rng = s.rngs()
    state = s.init(init_rng)
    batch = jax.device_put(synthetic_batch(np.random.default_rng(0), 16, 64, 2048, 2, 3), s.batch_sharding)
    # The matrix multiplies run in bfloat16 (float32 everywhere would silently double the cost).
    hlo = s.step.lower(state, batch, train_rng).as_text()
    products = [line for line in hlo.splitlines() if "dot_general" in line]
    assert products and sum("bf16" in line for line in products) >= len(products) // 2, products[:3]
    state, metrics = s.step(state, batch, train_rng)
    assert np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}


def test_override_typo_names_the_nearest_field():
    with pytest.raises(config_lib.ConfigError, match=r"no field 'model.hiden_size'; did you mean "
                                                     r"--config.model.hidden_size\?"):
        config_lib.load_config(str(ROOT / "configs" / "tiny.py"), ["--config.model.hiden_size=3"])


def _truncated_normal_std(stddev, cut=2.0):
    """The std of a normal N(0, stddev^2) cut at +-cut sigma (what TF1's truncated_normal_initializer
    draws): stddev * sqrt(1 - 2 c phi(c) / (2 Phi(c) - 1))."""
    import math

    phi = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return stddev * math.sqrt(1 - 2 * cut * phi / mass)


@pytest.fixture(scope="module")
def small_params():
    spec = config_lib.model_spec(config_lib.load_config("small"))  # E 128 -> H 256: embeddings_project
    params = nn.unbox(init_params(Electra(spec), jax.random.key(0), 8))
    params = jax.tree.map(np.asarray, unstack_layers(params))  # the preset scans its layers: one matrix each
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}


GLOROT = ("embeddings_project", "dense_prediction")  # tf.layers.dense's default initialiser there


def test_initial_weights_have_the_originals_scale(small_params):
    """The original's truncated_normal_initializer(0.02) (std 0.0176, |w| < 0.04) for embeddings,
    attention, FFN and the heads' hidden layers, on ELECTRA-Small's fresh matrices, against the
    formula (and TF's own initialiser); zero biases, unit LayerNorm scales."""
    expected = _truncated_normal_std(0.02)
    assert abs(expected - 0.017592) < 1e-6
    normal = {k: v for k, v in small_params.items() if v.ndim >= 2 and not any(g in k for g in GLOROT)}
    assert any("word_embeddings" in k for k in normal) and any("intermediate" in k for k in normal)
    for name, w in normal.items():
        if w.size >= 1_000_000:  # the word embeddings (30522 x 128)
            assert abs(w.std() / expected - 1) < 0.005, (name, w.std())
            assert 0.0395 < np.abs(w).max() < 0.04, (name, np.abs(w).max())
    pooled = np.concatenate([w.ravel() for w in normal.values()])
    assert abs(pooled.std() / expected - 1) < 0.002 and np.abs(pooled).max() < 0.04
    for name, leaf in small_params.items():
        if name.endswith("bias']"):
            assert not leaf.any(), name
        if name.endswith("['scale']"):
            assert (leaf == 1).all(), name

    tf = pytest.importorskip("tensorflow")
    tf_weights = tf.compat.v1.truncated_normal_initializer(stddev=0.02, seed=0)((2000, 1000)).numpy()
    assert abs(tf_weights.std() / expected - 1) < 0.005 and np.abs(tf_weights).max() < 0.04


def test_glorot_layers_match_tf_layers_dense_default(small_params):
    for suffix, (fan_in, fan_out) in {"embeddings_project']['kernel']": (128, 256),
                                      "dense_prediction']['kernel']": (256, 1)}.items():
        (name, w), = [(k, v) for k, v in small_params.items() if k.endswith(suffix) and "discriminator" in k]
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= limit and abs(w.std() / (limit / np.sqrt(3)) - 1) < 0.15, name


@pytest.mark.parametrize("head,glorot", [("paper", True), ("hf", False)])
def test_classifier_output_layer_initialiser(head, glorot):
    """The paper head's output layer is tf.layers.dense's Glorot uniform, as run_finetuning's; the HF
    head keeps the truncated normal(0.02)."""
    from electra_jax.model import Classifier

    spec = config_lib.model_spec(config_lib.load_config("small"))
    ids = np.zeros((1, 8), np.int32)
    params = nn.unbox(Classifier(spec, 300, "cls", head).init(jax.random.key(2), ids, ids, np.ones_like(ids))["params"])
    # The paper's head is one dense layer; HF's ElectraClassificationHead is dense -> GELU -> out_proj.
    assert sorted(params["head"]) == (["out_proj"] if head == "paper" else ["dense", "out_proj"])
    w = np.asarray(params["head"]["out_proj"]["kernel"])
    limit = np.sqrt(6 / (256 + 300))
    if glorot:
        assert np.abs(w).max() <= limit and abs(w.std() / (limit / np.sqrt(3)) - 1) < 0.05
    else:
        assert np.abs(w).max() < 0.04 and abs(w.std() / _truncated_normal_std(0.02) - 1) < 0.05


def test_tensorflow_is_kept_off_the_accelerators(monkeypatch):
    """host_tf() hides the GPUs from TensorFlow (it would otherwise reserve their memory before JAX)."""
    from electra_jax.fs import host_tf

    tf = host_tf()
    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind: calls.append((devices, kind)))
    assert host_tf() is tf and calls == [([], "GPU")]
