"""The step's layout switches (issue 37): FSDP by default, weights cast before they are gathered, the
remat policy chosen by compiling, per-platform attention and PRNG, the compiler flags. What the compiled
TPU program does with them is tested in test_plan.py (collectives) and measured in BENCHMARKS.md."""

import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import config as config_lib
from electra_jax import xla_flags
from electra_jax.data.synthetic import synthetic_batch
from electra_jax.train import cast_for_compute, fitting_remat, setup

GiB = 2**30


def test_the_default_mesh_is_fsdp_and_slices_become_the_data_axis():
    c = config_lib.default_config()
    assert config_lib.mesh_shape(c, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    c.mesh.dcn_data = 2  # two slices: data over the data-centre network, FSDP inside each
    assert config_lib.mesh_shape(c, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    c.mesh.update(data=-1, fsdp=1, dcn_data=1)  # plain data parallelism, still a choice
    assert config_lib.mesh_shape(c, 8) == {"data": 8, "fsdp": 1, "tensor": 1}


def test_a_saved_config_without_activation_rules_gets_the_defaults():
    """Runs saved before activation rules existed keep their parameter rules; their activations are
    laid out by the defaults, not left unconstrained (replicated)."""
    c = config_lib.default_config()
    c.sharding_rules = [["batch", ["data", "fsdp"]], ["embed", "tensor"]]
    rules = dict(config_lib.logical_rules(c))
    assert rules["embed"] == "tensor" and rules["activation_batch"] == ("data", "fsdp")
    assert dict(config_lib.model_spec(c).activation_rules)["activation_mlp"] == "tensor"
    c.model.activation_constraints = False
    assert config_lib.model_spec(c).activation_rules == ()


def test_weights_are_cast_on_their_shards_and_vectors_stay_float32():
    params = {"kernel": jnp.ones((4, 3)), "table": jnp.ones((2, 4, 3)), "bias": jnp.ones(3), "step": jnp.zeros([], jnp.int32)}
    assert cast_for_compute(params, "float32") is params  # float32 compute: nothing changes
    low = cast_for_compute(params, "bfloat16")
    assert {k: str(v.dtype) for k, v in low.items()} == {"kernel": "bfloat16", "table": "bfloat16",
                                                         "bias": "float32", "step": "int32"}


def test_a_bf16_step_keeps_float32_state_with_or_without_the_cast(tiny_config):
    """The cast changes where weights become bf16 (before the gather, not at use), not the step: the
    first loss agrees to bf16 precision, and the state stays float32 either way."""
    tiny_config.model.dtype = "bfloat16"
    batch = synthetic_batch(np.random.default_rng(0), 8, tiny_config.data.seq_len, 2048, 2, 3)
    losses = {}
    for cast in (True, False):
        c = tiny_config.copy_and_resolve_references()
        c.model.cast_params = cast
        s = setup(c, jax.devices()[:1])
        state, metrics = s.step(s.init(s.rngs()[0]), jax.device_put(batch, s.batch_sharding), s.rngs()[1])
        losses[cast] = float(metrics["loss"])
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)


def test_param_norm_can_be_left_out(tiny_config):
    tiny_config.train.param_norm = False
    s = setup(tiny_config, jax.devices()[:1])
    batch = synthetic_batch(np.random.default_rng(0), 8, tiny_config.data.seq_len, 2048, 2, 3)
    _, metrics = s.step(s.init(s.rngs()[0]), jax.device_put(batch, s.batch_sharding), s.rngs()[1])
    assert "param_norm" not in metrics and np.isfinite(float(metrics["grad_norm"]))


@pytest.mark.parametrize("peaks,budget,chosen", [
    ({"none": 20 * GiB, "dots": 12 * GiB, "full": 4 * GiB}, 16 * GiB, "dots"),
    ({"none": None, "dots": 15.5 * GiB, "full": 4 * GiB}, 16 * GiB, "full"),  # refused; over 95% of a chip
    ({"none": 2 * GiB, "dots": 1 * GiB, "full": 1 * GiB}, 16 * GiB, "none"),
    ({"none": None, "dots": None, "full": None}, 16 * GiB, "full"),  # nothing fits: the least memory
])
def test_remat_auto_is_the_fastest_policy_whose_compiled_step_fits(tiny_config, peaks, budget, chosen):
    asked = []

    def peak(c):
        asked.append(c.model.remat_policy)
        return peaks[c.model.remat_policy]

    tpu = [types.SimpleNamespace(platform="tpu")]
    assert fitting_remat(tiny_config, tpu, budget, peak) == chosen
    assert asked == ["none", "dots", "full"][:asked.index(chosen) + 1 if chosen in asked else 3]
    assert fitting_remat(tiny_config, jax.devices()[:1], budget, peak) == "none"  # CPU: never compiled


def test_remat_auto_runs_as_none_on_the_cpu(tiny_config):
    tiny_config.model.remat_policy = "auto"
    assert setup(tiny_config, jax.devices()[:1]).model.spec.remat_policy == "none"


def test_attention_and_prng_resolve_per_platform(tiny_config):
    assert [config_lib.resolve_attention("fused", p) for p in ("gpu", "tpu", "cpu")] == ["cudnn", "splash", "fused"]
    assert config_lib.resolve_attention("xla", "tpu") == "xla"
    assert config_lib.resolve_rng_impl(tiny_config, "tpu") == "rbg"
    assert config_lib.resolve_rng_impl(tiny_config, "gpu") == "threefry2x32"
    tiny_config.rng_impl = "unsafe_rbg"
    assert config_lib.resolve_rng_impl(tiny_config, "cpu") == "unsafe_rbg"
    tiny_config.model.attention = "splash"  # no dropout on the probabilities in a fused kernel
    with pytest.raises(config_lib.ConfigError, match="attention_dropout_rate"):
        config_lib.validate(tiny_config)


def test_compiler_flags_are_added_once_and_the_users_win(monkeypatch):
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d"}
    xla_flags.apply("gpu", env)
    flags = env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=false" in flags and "--xla_dump_to=/tmp/d" in flags
    assert sum(f.startswith("--xla_gpu_enable_latency_hiding_scheduler") for f in flags) == 1
    assert set(xla_flags.GPU_FLAGS[1:]) <= set(flags)
    env = {}
    xla_flags.apply("tpu", env)
    assert "--xla_tpu_spmd_rng_bit_generator_unsafe=true" in env["LIBTPU_INIT_ARGS"].split()

    from electra_jax import cli

    for platforms, flags_set in (("cuda", True), ("cpu", False)):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        monkeypatch.delenv("XLA_FLAGS", raising=False)
        cli._accelerator_flags()
        assert ("--xla_gpu_enable_pipelined_all_gather=true" in os.environ.get("XLA_FLAGS", "")) == flags_set
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv("ELECTRA_JAX_XLA_FLAGS", "0")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cli._accelerator_flags()
    assert "XLA_FLAGS" not in os.environ


def test_a_padded_vocabulary_computes_the_same_loss_and_exports_the_real_one(tiny_config):
    """vocab_multiple pads the word table and the generator's output (2048 -> 2176 rows at 1088): the
    loss on the same weights is the unpadded model's, no padding id is ever sampled, and the export
    has 2048 rows again."""
    from electra_jax.hf import from_hf_state_dict, to_hf_state_dict
    from electra_jax.model import Electra, init_params
    from electra_jax.objective import electra_loss

    tiny_config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    plain = config_lib.model_spec(tiny_config)
    tiny_config.model.vocab_multiple = 1088
    padded = config_lib.model_spec(tiny_config)
    assert (plain.vocab_rows, padded.vocab_rows) == (2048, 2176)
    params = jax.tree.map(np.array, nn.unbox(init_params(Electra(padded), jax.random.key(0),
                                                         tiny_config.data.seq_len, 9)))
    assert params["embeddings"]["word_embeddings"].shape == (2176, 32)
    params["generator"]["output_bias"][2048:] = 50.0  # would dominate the softmax if it were not masked
    cut = jax.tree.map(np.copy, params)
    cut["embeddings"]["word_embeddings"] = params["embeddings"]["word_embeddings"][:2048]
    cut["generator"]["output_bias"] = params["generator"]["output_bias"][:2048]
    batch = synthetic_batch(np.random.default_rng(0), 8, tiny_config.data.seq_len, 2048, 2, 3)
    spec = config_lib.objective_spec(tiny_config)
    rng = jax.random.key(1)
    (loss_p, m_p), (loss_u, m_u) = (electra_loss(p, batch, rng, model=Electra(s), spec=spec)
                                    for p, s in ((params, padded), (cut, plain)))
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
    logits = Electra(padded).apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                                   batch["input_mask"], np.zeros((8, 9), np.int32), method=Electra.generator_logits)
    assert int(np.asarray(logits).argmax(-1).max()) < 2048  # padding rows have no probability
    hf = to_hf_state_dict(params, padded, "generator")
    assert hf["electra.embeddings.word_embeddings.weight"].shape == (2048, 32)
    assert hf["generator_lm_head.bias"].shape == (2048,)
    back = from_hf_state_dict(hf, padded, "generator")
    assert back["embeddings"]["word_embeddings"].shape == (2176, 32)
    np.testing.assert_array_equal(back["embeddings"]["word_embeddings"][:2048], cut["embeddings"]["word_embeddings"])
