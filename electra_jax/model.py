"""ELECTRA's generator and discriminator as pure-functional Flax (linen) modules.

One `Electra` module owns three parameter subtrees, mirroring google-research/electra's scopes:

    embeddings/      word, position and token-type tables + their LayerNorm, shared by both models
    generator/       embeddings_project (if E != H), encoder, mlm_head (logits tied to the word table)
    discriminator/   embeddings_project (if E != H), encoder, head

With the "mlm" objective (the BERT baseline) there is no discriminator: the generator is full size.

Every parameter carries logical axis names ('vocab', 'embed', 'mlp', 'heads', 'kv', ...) which the
sharding rules in the config map onto the device mesh. Dropout keys are derived explicitly, one per
layer, so the unrolled and `nn.scan` encoders (and any remat policy) compute the same numbers.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax.config import EncoderSpec, ModelSpec

Array = jax.Array
_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _normal(spec: ModelSpec):
    # As TF1's truncated_normal_initializer(stddev=initializer_range): a normal of that stddev cut at
    # 2 sigma (so the weights' std is 0.88 x initializer_range); JAX's takes stddev the same way.
    return nn.initializers.truncated_normal(stddev=spec.initializer_range)


def _p(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # BERT/ELECTRA use exact erf, not the tanh default


def _dense(features, axes, name, spec: ModelSpec, init=None, bias_axis=None):
    """A Dense whose kernel/bias carry logical axes; fp32 parameters, compute in `spec.dtype`."""
    return nn.Dense(
        features,
        kernel_init=_p(init or _normal(spec), axes),
        bias_init=_p(nn.initializers.zeros, (bias_axis or axes[-1],)),
        dtype=spec.dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _layer_norm(name, spec: ModelSpec):
    return nn.LayerNorm(
        epsilon=spec.layer_norm_eps,
        scale_init=_p(nn.initializers.ones, ("norm",)),
        bias_init=_p(nn.initializers.zeros, ("norm",)),
        dtype=spec.dtype,
        param_dtype=jnp.float32,
        name=name,
    )


# Logical axes of activations; the config's sharding rules map them onto the mesh while a step is traced
# (sharding.activation_layout). [batch, length, hidden] between layers, [.., heads, head_dim] in attention.
_BLE = ("activation_batch", "activation_length", "activation_embed")
_BLHD = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


def _constrain(x, axes, spec: ModelSpec):
    """Pin an activation's layout by logical names, so XLA does not guess it (a guessed layout moved
    token ids and f32 [B, S, H] activations between chips). Active only while a step is traced on a mesh
    (sharding.activation_layout); the rules are the ModelSpec's, not a context of flax's (flax's would
    also constrain parameter boxes at init, which DenseGeneral's reshaped kernels reject)."""
    if not spec.activation_rules or jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, nn.logical_to_mesh_axes(axes, spec.activation_rules))


def _dropout(x, rate, key, deterministic):
    return nn.Dropout(rate)(x, deterministic=deterministic, rng=key)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings and their LayerNorm (no dropout: each model adds its own)."""

    spec: ModelSpec

    def setup(self):
        s, init = self.spec, _normal(self.spec)
        self.word_embeddings = self.param(
            "word_embeddings", _p(init, ("vocab", "embed")), (s.vocab_rows, s.embedding_size))
        self.position_embeddings = self.param(
            "position_embeddings", _p(init, ("position", "embed")),
            (s.max_position_embeddings, s.embedding_size))
        self.token_type_embeddings = self.param(
            "token_type_embeddings", _p(init, ("type", "embed")), (s.type_vocab_size, s.embedding_size))
        self.layer_norm = _layer_norm("layer_norm", s)

    def __call__(self, input_ids: Array, segment_ids: Array) -> Array:
        seq_len = input_ids.shape[-1]
        # The table whole on each chip (under FSDP: gathered, in bf16 with cast_params) for a local
        # lookup; else XLA gathers the whole batch's [B, S, E] gradient to scatter it into each shard.
        table = _constrain(self.word_embeddings, ("activation_vocab", "activation_embed"), self.spec)
        x = (jnp.take(table, input_ids, axis=0)
             + jnp.take(self.token_type_embeddings, segment_ids, axis=0)
             + self.position_embeddings[None, :seq_len])
        return _constrain(self.layer_norm(_constrain(x, _BLE, self.spec)), _BLE, self.spec)


def _attention_bias(input_mask: Array) -> Array:
    """Additive mask on keys only, as the original (-10000, not -inf): [B, 1, 1, S]."""
    return ((1.0 - input_mask.astype(jnp.float32)) * -10000.0)[:, None, None, :]


def splash_attention(q: Array, k: Array, v: Array, input_mask: Array, spec: ModelSpec,
                     interpret: bool | None = None) -> Array:
    """Softmax attention [B, S, N, D] by the Splash (Pallas) TPU kernel, as MaxText uses from length 128:
    the padding as segment ids (a real token sees only real tokens), q pre-scaled by 1/sqrt(D). A Pallas
    kernel is not partitioned by XLA, so under a mesh it runs per shard (shard_map: rows split as the
    batch, heads as the tensor axis). `interpret` (default: off a TPU) runs the kernel's Python
    semantics, which is how it is checked on a CPU. A length that is not a multiple of 128 (the kernel's
    smallest block) is padded to one with padding tokens, which no real token sees, and cut back."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    length = q.shape[1]
    seq = -(-length // 128) * 128
    if seq != length:  # fine-tuning trims rows to a multiple of 8, QA windows are any length
        pad = lambda x: jnp.pad(x, [(0, 0), (0, seq - length)] + [(0, 0)] * (x.ndim - 2))
        return splash_attention(pad(q), pad(k), pad(v), pad(input_mask), spec, interpret)[:, :length]
    mesh = jax.sharding.get_abstract_mesh()
    if interpret is None:
        device = None if mesh.empty else mesh.abstract_device
        interpret = (device.platform if device is not None else jax.default_backend()) != "tpu"
    block = next(b for b in (512, 256, 128) if seq % b == 0)
    sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                               block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

    def local(q, k, v, segments):
        heads = q.shape[2]
        kernel = kernels.make_splash_mha(masks.MultiHeadMask([masks.FullMask((seq, seq))] * heads),
                                         block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        per_head = lambda x: jnp.swapaxes(x, 1, 2)  # [b, S, n, d] <-> [b, n, S, d]
        ids = kernels.SegmentIds(q=segments, kv=segments)
        out = jax.vmap(kernel)(per_head(q * q.shape[-1] ** -0.5), per_head(k), per_head(v), segment_ids=ids)
        return per_head(out)

    segments = input_mask.astype(jnp.int32)
    if mesh.empty or not spec.activation_rules:
        return local(q, k, v, segments)
    qkv = nn.logical_to_mesh_axes(_BLHD, spec.activation_rules)
    rows = nn.logical_to_mesh_axes(_BLE[:2], spec.activation_rules)
    return jax.shard_map(local, in_specs=(qkv, qkv, qkv, rows), out_specs=qkv, check_vma=False)(q, k, v, segments)


class SelfAttention(nn.Module):
    spec: ModelSpec
    enc: EncoderSpec
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array, input_mask: Array, key: Array) -> Array:
        s, e = self.spec, self.enc
        qkv = functools.partial(
            nn.DenseGeneral, features=(e.num_heads, e.head_dim),
            kernel_init=_p(_normal(s), ("embed", "heads", "kv")),
            bias_init=_p(nn.initializers.zeros, ("heads", "kv")),
            dtype=s.dtype, param_dtype=jnp.float32)
        q, k, v = (_constrain(qkv(name=name)(x), _BLHD, s) for name in ("query", "key", "value"))
        # Fused kernels have no dropout on the probabilities (config validation requires rate 0).
        if s.attention == "cudnn":  # cuDNN flash attention; padding given as lengths (it is at the end)
            # At least 1: a row that is all padding (a batch's filler rows) would otherwise divide by 0.
            lengths = jnp.maximum(jnp.sum(input_mask, axis=-1, dtype=jnp.int32), 1)
            context = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
        elif s.attention == "splash":
            context = splash_attention(q, k, v, input_mask, s)
        elif s.attention == "fused":  # XLA's implementation of the same op (CPU; and a reference)
            context = jax.nn.dot_product_attention(q, k, v, bias=_attention_bias(input_mask).astype(q.dtype),
                                                   implementation="xla")
        else:
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            scores = scores * (e.head_dim ** -0.5) + _attention_bias(input_mask)
            probs = jax.nn.softmax(scores, axis=-1)
            probs = _dropout(probs, s.attention_dropout_rate, key, self.deterministic)
            context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        context = _constrain(context, _BLHD, s)
        return nn.DenseGeneral(
            e.hidden_size, axis=(-2, -1),
            kernel_init=_p(_normal(s), ("heads", "kv", "embed")),
            bias_init=_p(nn.initializers.zeros, ("norm",)),
            dtype=s.dtype, param_dtype=jnp.float32, name="output")(context)


class EncoderLayer(nn.Module):
    """One post-LN BERT layer."""

    spec: ModelSpec
    enc: EncoderSpec
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array, input_mask: Array, key: Array) -> Array:
        s, e = self.spec, self.enc
        k_attn, k_attn_out, k_ffn_out = jax.random.split(key, 3)
        x = _constrain(x, _BLE, s)
        h = SelfAttention(s, e, self.deterministic, name="attention")(x, input_mask, k_attn)
        h = _dropout(h, s.dropout_rate, k_attn_out, self.deterministic)
        x = _layer_norm("attention_layer_norm", s)(x + h)
        h = _gelu(_dense(e.intermediate_size, ("embed", "mlp"), "intermediate", s)(x))
        h = _constrain(h, ("activation_batch", "activation_length", "activation_mlp"), s)
        h = _dense(e.hidden_size, ("mlp", "embed"), "output", s, bias_axis="norm")(h)
        h = _dropout(h, s.dropout_rate, k_ffn_out, self.deterministic)
        return _constrain(_layer_norm("output_layer_norm", s)(x + h), _BLE, s)


class _ScannedLayer(EncoderLayer):
    """EncoderLayer in nn.scan's (carry, xs) -> (carry, ys) form."""

    def __call__(self, x, input_mask, key):  # pytype: disable=signature-mismatch
        return super().__call__(x, input_mask, key), None


class Encoder(nn.Module):
    """Embedding dropout, optional embeddings_project (E -> H) and the stack of layers."""

    spec: ModelSpec
    enc: EncoderSpec

    @nn.compact
    def __call__(self, embedded: Array, input_mask: Array, deterministic: bool) -> Array:
        s, e = self.spec, self.enc
        if deterministic:
            key = jax.random.key(0)  # unused: dropout is off
        else:
            key = self.make_rng("dropout")
        k_embed, k_layers = jax.random.split(key)
        x = _dropout(embedded, s.dropout_rate, k_embed, deterministic)
        if s.embedding_size != e.hidden_size:
            x = _dense(e.hidden_size, ("embed", "proj"), "embeddings_project", s,
                       init=nn.initializers.glorot_uniform())(x)
        x = _constrain(x, _BLE, s)
        input_mask = input_mask.astype(jnp.int32)
        layer_keys = jax.random.split(k_layers, e.num_layers)

        layer = _ScannedLayer if s.scan_layers else EncoderLayer
        if s.remat_policy != "none":
            layer = nn.remat(layer, policy=_REMAT_POLICIES[s.remat_policy], prevent_cse=not s.scan_layers)
        if s.scan_layers:
            stack = nn.scan(
                layer, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast, 0), length=e.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(s, e, deterministic, name="layers")(x, input_mask, layer_keys)
        else:
            for i in range(e.num_layers):
                x = layer(s, e, deterministic, name=f"layer_{i}")(x, input_mask, layer_keys[i])
        return x


class Generator(nn.Module):
    """Masked-LM: the encoder, then the head at the N masked slots only, tied to the word table."""

    spec: ModelSpec

    @nn.compact
    def __call__(self, embedded, input_mask, positions, word_embeddings, deterministic) -> Array:
        s = self.spec
        x = Encoder(s, s.generator, name="encoder")(embedded, input_mask, deterministic)
        x = _constrain(jnp.take_along_axis(x, positions[..., None], axis=1), _BLE, s)  # [B, N, H]
        x = _gelu(_dense(s.embedding_size, ("embed", "proj"), "dense", s)(x))
        x = _layer_norm("layer_norm", s)(x)
        bias = self.param("output_bias", _p(nn.initializers.zeros, ("vocab",)), (s.vocab_rows,))
        table = _constrain(word_embeddings.astype(x.dtype), ("activation_vocab", "activation_embed"), s)
        logits = jnp.einsum("bne,ve->bnv", x, table,
                            preferred_element_type=jnp.float32)
        logits = logits + bias
        if s.vocab_rows > s.vocab_size:  # padding rows: no probability, so never sampled and no gradient
            logits = jnp.where(jnp.arange(s.vocab_rows) < s.vocab_size, logits, -1e9)
        return _constrain(logits, ("activation_batch", "activation_length", "activation_vocab"), s)


class Discriminator(nn.Module):
    """Replaced-token detection: the encoder, then dense + GELU -> dense(1), one logit per token."""

    spec: ModelSpec

    @nn.compact
    def __call__(self, embedded, input_mask, deterministic) -> Array:
        s = self.spec
        x = Encoder(s, s.discriminator, name="encoder")(embedded, input_mask, deterministic)
        x = _gelu(_dense(s.discriminator.hidden_size, ("embed", "proj"), "dense", s)(x))
        x = _dense(1, ("embed", "proj"), "dense_prediction", s, init=nn.initializers.glorot_uniform())(x)
        return _constrain(x[..., 0].astype(jnp.float32), _BLE[:2], s)


class Electra(nn.Module):
    """Both models over the shared embeddings. Call `generator_logits` / `discriminator_logits`
    through `apply(..., method=...)`; `__call__` runs both and exists for `init`."""

    spec: ModelSpec

    def setup(self):
        self.embeddings = Embeddings(self.spec)
        if not self.spec.uniform_generator:
            self.generator = Generator(self.spec)  # with objective "mlm": the full-size masked LM
        if self.spec.objective != "mlm":
            self.discriminator = Discriminator(self.spec)

    def generator_logits(self, input_ids, segment_ids, input_mask, positions, deterministic=True):
        """Logits [B, N, V] (fp32) at `positions` [B, N]; zeros with a uniform generator (the original's)."""
        if self.spec.uniform_generator:
            return jnp.zeros((*positions.shape, self.spec.vocab_size), jnp.float32)
        embedded = self.embeddings(input_ids, segment_ids)
        return self.generator(embedded, input_mask, positions, self.embeddings.word_embeddings,
                              deterministic)

    def discriminator_logits(self, input_ids, segment_ids, input_mask, deterministic=True):
        """Logits [B, S] (fp32): > 0 means 'replaced'."""
        embedded = self.embeddings(input_ids, segment_ids)
        return self.discriminator(embedded, input_mask, deterministic)

    def __call__(self, input_ids, segment_ids, input_mask, positions, deterministic=True):
        generator = self.generator_logits(input_ids, segment_ids, input_mask, positions, deterministic)
        if self.spec.objective == "mlm":
            return generator, None
        return generator, self.discriminator_logits(input_ids, segment_ids, input_mask, deterministic)


class _DiscriminatorEncoder(nn.Module):
    """The discriminator's encoder under its pretraining parameter names (`discriminator/encoder`)."""

    spec: ModelSpec

    @nn.compact
    def __call__(self, embedded, input_mask, deterministic):
        return Encoder(self.spec, self.spec.discriminator, name="encoder")(embedded, input_mask, deterministic)


class _Head(nn.Module):
    spec: ModelSpec
    num_outputs: int
    style: str

    @nn.compact
    def __call__(self, x, deterministic):
        s = self.spec
        keys = (None, None) if deterministic else jax.random.split(self.make_rng("dropout"))
        x = _dropout(x, s.dropout_rate, keys[0], deterministic)
        if self.style == "hf":
            x = _gelu(_dense(s.discriminator.hidden_size, ("embed", "proj"), "dense", s)(x))
            x = _dropout(x, s.dropout_rate, keys[1], deterministic)
        # The paper's head is the original's tf.layers.dense: Glorot uniform (HF's, a normal(0.02)).
        init = nn.initializers.glorot_uniform() if self.style == "paper" else None
        return _dense(self.num_outputs, ("embed", "proj"), "out_proj", s, init=init)(x).astype(jnp.float32)


class Classifier(nn.Module):
    """Fine-tuning model: the shared embeddings and the discriminator's encoder (pretrained parameters
    drop in by name), then a head on [CLS] (`pooling="cls"`, the original's), on the mean of the
    non-padding tokens (`"mean"`), or on every token (`"tokens"`).

    head "paper": dropout -> dense(outputs), the original's. "hf": dropout -> dense(H) -> GELU ->
    dropout -> out_proj, Hugging Face's ElectraClassificationHead, so the model exports exactly.
    """

    spec: ModelSpec
    num_outputs: int
    pooling: str = "cls"
    head: str = "paper"

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic=True) -> Array:
        s = self.spec
        embedded = Embeddings(s, name="embeddings")(input_ids, segment_ids)
        x = _DiscriminatorEncoder(s, name="discriminator")(embedded, input_mask, deterministic)
        return _Head(s, self.num_outputs, self.head, name="head")(pool(x, input_mask, self.pooling), deterministic)


def pool(x: Array, input_mask: Array, pooling: str) -> Array:
    """[B, S, H] -> [B, H]: the [CLS] vector ("cls") or the mean of the non-padding ones ("mean");
    "tokens" keeps every token."""
    if pooling == "cls":
        return x[:, 0]
    if pooling == "mean":
        # Summed in float32: hundreds of bf16 token vectors would lose the small ones.
        mask = input_mask[..., None].astype(jnp.float32)
        return ((x.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1)).astype(x.dtype)
    return x


def frozen_features(spec: ModelSpec, backbone: dict, input_ids: Array, segment_ids: Array, input_mask: Array,
                    pooling: str = "mean") -> Array:
    """A fine-tuning backbone's ({embeddings, discriminator: {encoder}}, as `Classifier` names them)
    pooled last-layer vectors, without dropout: the features a linear probe reads."""
    embedded = Embeddings(spec).apply({"params": backbone["embeddings"]}, input_ids, segment_ids)
    x = _DiscriminatorEncoder(spec).apply({"params": backbone["discriminator"]}, embedded, input_mask, True)
    return pool(x, input_mask, pooling)


def answer_mask(segment_ids, input_mask) -> Array:
    """1 where an answer may start or end: the context (segment 1, not padding) and [CLS] (no answer)."""
    mask = jnp.asarray(segment_ids * input_mask, jnp.float32)
    return mask.at[:, 0].set(1.0)


class SpanExtractor(nn.Module):
    """Extractive QA: the shared embeddings and the discriminator's encoder, then a span head "head".

    head "hf": one dense layer to (start, end), Hugging Face's `qa_outputs` (exports exactly as
    ElectraForQuestionAnswering; logits unmasked, as there). Returns {start_logits, end_logits}.

    head "paper": the original's `joint_prediction` (qa_tasks.py): start logits from a dense layer; the
    end conditioned on a start -- dense(512, GELU) over [h_start; h_end] -> dense(1) -- on the gold
    start (`start_positions`) in training and on each of the `beam` best starts otherwise; with
    `answerable` (SQuAD 2.0), a no-answer logit from [h_CLS; sum_i p_start(i) h_i] -> dense(512, GELU)
    -> dense(1), trained on "is impossible". Logits outside the context and [CLS] get -1000, as there.
    Returns {start_logits, end_logits} [B, S] in training, else {start_logits, start_top_log_probs,
    start_top_index [B, K], end_top_log_probs, end_top_index [B, K, K]}; plus no_answer_logit [B].
    """

    spec: ModelSpec
    head: str = "hf"
    beam: int = 20
    answerable: bool = False

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic=True, start_positions=None):
        s = self.spec
        embedded = Embeddings(s, name="embeddings")(input_ids, segment_ids)
        x = _DiscriminatorEncoder(s, name="discriminator")(embedded, input_mask, deterministic)
        head = _SpanHead(s, self.head, self.beam, self.answerable, name="head")
        return head(x, answer_mask(segment_ids, input_mask), start_positions)


class _SpanHead(nn.Module):
    spec: ModelSpec
    style: str
    beam: int
    answerable: bool

    @nn.compact
    def __call__(self, x, mask, start_positions):
        s = self.spec
        if self.style == "hf":
            logits = _dense(2, ("embed", "proj"), "qa_outputs", s)(x).astype(jnp.float32)
            return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        x = x.astype(jnp.float32)
        glorot = nn.initializers.glorot_uniform()  # tf.layers.dense's default

        def dense(n, name):
            return nn.Dense(n, kernel_init=_p(glorot, ("embed", "proj")),
                            bias_init=_p(nn.initializers.zeros, ("proj",)), name=name)

        off_context = 1000.0 * (mask - 1.0)
        start_logits = dense(1, "start")(x)[..., 0] + off_context
        # dense(512) over [h_start; h_end], as the original's concat, computed as W_s h_start + W_e h_end:
        # the same kernel [2H, 512], without a [B, beam, S, 2H] tensor (2 GB at Base, S 512) and with ~1/40
        # of its FLOPs at evaluation.
        kernel = self.param("end_hidden_kernel", _p(glorot, ("embed", "proj")), (2 * x.shape[-1], 512))
        bias = self.param("end_hidden_bias", _p(nn.initializers.zeros, ("proj",)), (512,))
        end_out = dense(1, "end")
        per_token = x @ kernel[x.shape[-1]:] + bias  # [B, S, 512], once

        def end_logits(h_start, tokens):  # each start [..., H] against every token's projection
            return end_out(_gelu((h_start @ kernel[:x.shape[-1]])[..., None, :] + tokens))[..., 0]

        out = {"start_logits": start_logits}
        if start_positions is not None:  # training: the end given the gold start
            h_start = jnp.take_along_axis(x, start_positions[:, None, None], axis=1)[:, 0]
            out["end_logits"] = end_logits(h_start, per_token) + off_context
        else:
            k = min(self.beam, x.shape[1])
            out["start_top_log_probs"], out["start_top_index"] = jax.lax.top_k(
                jax.nn.log_softmax(start_logits), k)
            h_start = jnp.take_along_axis(x, out["start_top_index"][..., None], axis=1)  # [B, K, H]
            ends = end_logits(h_start, per_token[:, None]) + off_context[:, None]  # [B, K, S]
            out["end_top_log_probs"], out["end_top_index"] = jax.lax.top_k(jax.nn.log_softmax(ends), k)
        if self.answerable:
            pooled = jnp.einsum("bs,bsh->bh", jax.nn.softmax(start_logits), x)
            hidden = _gelu(dense(512, "answerable_hidden")(jnp.concatenate([x[:, 0], pooled], -1)))
            out["no_answer_logit"] = dense(1, "answerable")(hidden)[..., 0]
        return out


def init_params(model: Electra, rng: Array, seq_len: int, num_positions: int = 1) -> Any:
    """Initialise (boxed, logically partitioned) parameters from dummy inputs of the right shape."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, num_positions), jnp.int32)
    return model.init({"params": rng}, ids, ids, jnp.ones_like(ids), positions)["params"]


# ----------------------------------------------------------------------------- layer layout


def stack_layers(params: dict) -> dict:
    """Unrolled layout (encoder/layer_i/...) -> scanned layout (encoder/layers/... with a leading L axis)."""
    return _map_encoders(params, _stack)


def unstack_layers(params: dict) -> dict:
    """Scanned layout -> unrolled layout; a no-op on unrolled params."""
    return _map_encoders(params, _unstack)


def _map_encoders(params, fn):
    params = dict(params)
    for tower in ("generator", "discriminator"):
        if tower in params and "encoder" in params[tower]:
            params[tower] = {**params[tower], "encoder": fn(params[tower]["encoder"])}
    return params


def _is_layer(name: str) -> bool:
    return name.startswith("layer_")


def _stack(encoder):
    if "layers" in encoder:
        return encoder
    rest = {k: v for k, v in encoder.items() if not _is_layer(k)}
    layers = [encoder[f"layer_{i}"] for i in range(len(encoder) - len(rest))]
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def _unstack(encoder):
    if "layers" not in encoder:
        return encoder
    rest = {k: v for k, v in encoder.items() if k != "layers"}
    n = jax.tree.leaves(encoder["layers"])[0].shape[0]
    return {**rest, **{f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], encoder["layers"])
                       for i in range(n)}}
