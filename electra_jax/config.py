"""Configuration: the defaults every preset starts from, derived values, and validation.

Config files in `configs/` are ml_collections ConfigDicts that hold only *primary* values (what the
paper states). Everything computed from them (generator width, heads, slots per sequence) is derived
here, once, by `model_spec` and `max_predictions_per_seq`. `validate` fails early, before any compile,
with a message that names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from electra_jax.errors import UserError


OPTIMIZERS = ("electra_adam", "adamw", "lamb")
DTYPES = ("float32", "bfloat16")
RNG_IMPLS = ("auto", "threefry2x32", "rbg", "unsafe_rbg")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "auto")
ATTENTIONS = ("xla", "fused", "cudnn", "splash")
SAMPLERS = ("inverse_cdf", "gumbel")
OBJECTIVES = ("electra", "mlm")
MESH_AXES = ("data", "fsdp", "tensor")
LAYERWISE_DEPTHS = ("original", "consecutive")
HEADS = ("paper", "hf")
POOLINGS = ("cls", "mean")

# Logical axis names carried by every parameter (see model.py), mapped onto mesh axes. Flax assigns
# rules in order and skips a mesh axis that a dimension of the same array already uses.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("proj", None),
    ("position", None),
    ("norm", None),
    ("layers", None),
    # Activations (model.py constrains each layer's input and output, q/k/v, the attention context, the
    # FFN's inner activation and the logits, as MaxText does), so XLA never guesses their layout: rows
    # split like the batch, hidden units whole (Megatron-style: the tensor axis splits heads and FFN units).
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field and the allowed values."""


def default_config() -> ml_collections.ConfigDict:
    """ELECTRA-Small as in google-research/electra `configure_pretraining.py`; presets override it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # PRNG for masking, dropout and sampling; see README "Randomness" for the measured trade-off. "auto":
    # rbg on TPU (the hardware generator; with xla_flags' --xla_tpu_spmd_rng_bit_generator_unsafe each
    # chip draws only its shard), threefry2x32 elsewhere (bit-identical across CPU/GPU and mesh shapes).
    c.rng_impl = "auto"

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 30522
    # The word table and the generator's output bias get this many rows at least, rounded up to a multiple
    # (128 in the accelerator presets: 30,522 -> 30,592, which a tensor axis of up to 128 divides; 30,522
    # itself divides no axis > 2, so it would be replicated). The extra rows are never looked up, get
    # -1e9 as logits (no probability, no gradient), and are cut off in the Hugging Face export.
    m.vocab_multiple = 1
    m.embedding_size = 128
    m.hidden_size = 256
    m.num_layers = 12
    m.num_heads = 4
    m.intermediate_size = 1024
    m.max_position_embeddings = 512
    m.type_vocab_size = 2
    m.dropout_rate = 0.1
    m.attention_dropout_rate = 0.1
    m.layer_norm_eps = 1e-12
    m.initializer_range = 0.02
    # Generator = a narrower copy of the discriminator (`get_generator_config`).
    m.generator_hidden_fraction = 0.25
    m.generator_layers_fraction = 1.0
    # Compute dtype; parameters and optimizer state are always float32. Presets target accelerators;
    # use float32 on CPU (configs/tiny.py does).
    m.dtype = "bfloat16"
    # Weight matrices cast to `dtype` once per step, on each chip's shard, before use: FSDP then gathers
    # bf16, not float32 (train.cast_for_compute). Gradients still update the float32 parameters.
    m.cast_params = True
    # Activation layouts pinned by the sharding rules' activation_* names (model._constrain); False leaves
    # them to XLA's propagation (which moved token ids and gathered whole-batch gradients: BENCHMARKS.md).
    m.activation_constraints = True
    m.scan_layers = False
    # What each layer keeps for the backward pass. "auto": the cheapest of none, dots, full whose
    # compiled step fits the chips' memory (train.fitting_remat: compiled, not guessed; "none" on CPU).
    m.remat_policy = "none"
    # "xla": softmax(QK^T) written out, with the original's attention-probability dropout (the paper's).
    # "fused": the platform's fused kernel, resolved for the devices by train.setup: "cudnn" on GPUs
    # (cuDNN flash attention, padding given as sequence lengths), "splash" on TPUs (the Pallas Splash
    # kernel, padding as segment ids, lengths padded to a multiple of 128 inside), and on CPUs XLA's implementation of
    # jax.nn.dot_product_attention. None has dropout on the probabilities: attention_dropout_rate=0.
    m.attention = "xla"

    # Special token ids come from the tokenizer; these are BERT-uncased's.
    c.tokens = t = ml_collections.ConfigDict()
    t.pad_id = 0
    t.cls_id = 101
    t.sep_id = 102
    t.mask_id = 103

    c.objective = o = ml_collections.ConfigDict()
    # "electra": replaced-token detection (generator + discriminator). "mlm": the original's BERT
    # baseline (`electra_objective=False`): the discriminator-sized model alone trained as a masked LM,
    # loss = gen_weight x MLM; its parameters live in the generator slot, exported as ElectraForMaskedLM.
    o.name = "electra"
    o.mask_prob = 0.15
    o.mask_token_prob = 0.85  # chosen slots that become [MASK]; the rest keep their token
    # Chosen slots given a uniformly random vocabulary token instead (BERT's 10%, with
    # mask_token_prob=0.8). The original's `pretrain_helpers.mask` has none: 0.
    o.random_token_prob = 0.0
    o.sample_with_replacement = True  # the original draws slots with replacement
    o.gen_weight = 1.0
    o.disc_weight = 50.0
    o.temperature = 1.0
    o.disallow_correct = False
    # The original's `uniform_generator` ablation: fakes drawn uniformly from the whole vocabulary (the
    # original's all-zero generator logits), no generator parameters, nothing but the discriminator
    # trained; the MLM metrics are then those of zero logits (loss log V). A baseline for the learned
    # generator at a given scale.
    o.uniform_generator = False
    # How a token is drawn from the generator at each masked slot; both draw from softmax(logits / T).
    # "gumbel" is the original's argmax(logits + Gumbel noise): a random word and two logs per
    # vocabulary entry. "inverse_cdf" needs two per slot: 10x cheaper on the CPU (BENCHMARKS.md).
    o.sampler = "inverse_cdf"

    c.data = d = ml_collections.ConfigDict()
    d.seq_len = 128
    d.path = ""  # a `build-data` output directory
    d.shuffle_buffer = 10_000
    # Resuming on data built with another tokenizer than the checkpoint's is refused (its embeddings
    # belong to the old vocabulary); True continues anyway. Each checkpoint still exports with its own.
    d.change_tokenizer = False

    c.batch_size = 128  # global, across all devices and hosts
    # Gradient accumulation: each step runs the global batch as this many sequential micro-batches
    # (same update, less activation memory).
    c.micro_batches = 1

    c.optim = p = ml_collections.ConfigDict()
    p.name = "electra_adam"
    p.learning_rate = 5e-4
    p.warmup_steps = 10_000
    p.lr_decay_power = 1.0
    p.weight_decay = 0.01
    p.b1 = 0.9
    p.b2 = 0.999
    p.eps = 1e-6
    p.grad_clip_norm = 1.0
    # 0: a NaN/Inf loss or gradient stops the run. N > 0: skip such steps (no update, counted in the
    # `skipped_steps` metric) and stop only after N in a row.
    p.skip_nonfinite = 0
    # Fine-tuning: learning rate x decay^(top - depth) per layer (1.0: off); `original` puts the head
    # at depth L+2 as google-research/electra (the top layer gets decay^2), `consecutive` at L+1.
    p.layerwise_lr_decay = 1.0
    p.layerwise_depth = "original"
    c.num_train_steps = 1_000_000

    # The training loop.
    c.train = tr = ml_collections.ConfigDict()
    tr.log_every = 100
    tr.eval_every = 10_000
    tr.eval_batches = 0  # 0: the whole held-out split
    tr.save_every = 10_000
    tr.keep_checkpoints = 3
    tr.async_checkpoints = True
    # The norm of all parameters each step (a metric and a non-finite check; the loss and gradient-norm
    # checks stay): one more reduction over the whole state per step. False drops it.
    tr.param_norm = True
    tr.profile_steps = 0  # > 0: a jax.profiler trace of this many steps after warm-up (`--profile`)

    # Mesh axis sizes; -1 takes all remaining devices. The default is FSDP (ZeRO-3) over every chip:
    # parameters, gradients and optimizer state split across the slice, each chip updating its share,
    # weights gathered (in the compute dtype, model.cast_params) layer by layer. data=-1, fsdp=1 is plain
    # data parallelism (every chip holds and updates everything).
    # dcn_data: how many TPU slices / GPU nodes the data axis spans over the data-centre network; with
    # data=1 it becomes the data axis (data over DCN, FSDP inside each slice or node).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1))
    c.sharding_rules = [list(r) for r in DEFAULT_SHARDING_RULES]
    return c


def accelerator_layout(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper presets' layout for TPUs and GPUs (BENCHMARKS.md, "The sharded step"): scanned layers (one
    layer compiled once: ~4x faster TPU compiles), remat "auto" (none, dots or full, whichever is the
    fastest that fits the chips, found by compiling; none on CPU) and the vocabulary padded to a multiple
    of 128. The numbers computed are the same as without any of them."""
    c.model.update(scan_layers=True, remat_policy="auto", vocab_multiple=128)
    return c


# ----------------------------------------------------------------------------- derived values


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the Flax modules and the HF mapping need; hashable, so it can be a module field."""

    vocab_size: int
    embedding_size: int
    max_position_embeddings: int
    type_vocab_size: int
    dropout_rate: float
    attention_dropout_rate: float
    layer_norm_eps: float
    initializer_range: float
    discriminator: EncoderSpec
    generator: EncoderSpec
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "xla"
    objective: str = "electra"  # "mlm": no discriminator; `generator` is the full-size masked LM
    uniform_generator: bool = False  # no generator module: its logits are zeros (objective.uniform_generator)
    # Logical activation axis -> mesh axes (the config's sharding rules); applied while a step is traced
    # on a mesh (sharding.activation_layout), ignored elsewhere.
    activation_rules: tuple = ()
    vocab_multiple: int = 1

    @property
    def vocab_rows(self) -> int:
        """Rows of the word table and the generator's output: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


def generator_encoder(m: ml_collections.ConfigDict) -> EncoderSpec:
    """The original's `get_generator_config`: width scaled, FFN 4x, one head per 64 dims."""
    hidden = int(round(m.hidden_size * m.generator_hidden_fraction))
    return EncoderSpec(
        hidden_size=hidden,
        num_layers=int(round(m.num_layers * m.generator_layers_fraction)),
        num_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
    )


def resolve_attention(attention: str, platform: str) -> str:
    """model.attention for a platform ("tpu", "gpu", "cpu"): "fused" becomes that platform's kernel."""
    if attention != "fused":
        return attention
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "fused")


def model_spec(config: ml_collections.ConfigDict, platform: str | None = None) -> ModelSpec:
    """The model's hashable description; `platform` (default: JAX's default backend) resolves
    attention "fused" to the kernel that platform has."""
    m = config.model
    if platform is None and m.attention == "fused":
        import jax

        platform = jax.default_backend()
    full = EncoderSpec(m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size)
    mlm = config.objective.get("name", "electra") == "mlm"
    return ModelSpec(
        vocab_size=m.vocab_size,
        embedding_size=m.embedding_size,
        max_position_embeddings=m.max_position_embeddings,
        type_vocab_size=m.type_vocab_size,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        layer_norm_eps=m.layer_norm_eps,
        initializer_range=m.initializer_range,
        discriminator=full,
        generator=full if mlm else generator_encoder(m),
        dtype=m.dtype,
        scan_layers=m.scan_layers,
        remat_policy="none" if m.remat_policy == "auto" else m.remat_policy,  # resolved before setup
        attention=resolve_attention(m.attention, platform or "cpu"),
        objective="mlm" if mlm else "electra",
        uniform_generator=not mlm and bool(config.objective.get("uniform_generator", False)),
        vocab_multiple=int(m.get("vocab_multiple", 1)),
        activation_rules=(tuple(r for r in logical_rules(config) if r[0].startswith("activation_"))
                          if m.get("activation_constraints", True) else ()),
    )


def resolve_rng_impl(config: ml_collections.ConfigDict, platform: str) -> str:
    """config.rng_impl, with "auto" resolved for the devices' platform ("tpu", "gpu", "cpu")."""
    if config.rng_impl != "auto":
        return config.rng_impl
    return "rbg" if platform == "tpu" else "threefry2x32"


def logical_rules(config: ml_collections.ConfigDict) -> tuple:
    """The config's sharding rules as tuples, then the default rule of any logical name they leave out
    (a run saved before activation rules existed keeps its parameter rules and gets the activations'
    defaults, not an unconstrained -- replicated -- layout)."""
    rules = [(name, tuple(t) if isinstance(t, (list, tuple)) else t) for name, t in config.sharding_rules]
    named = {name for name, _ in rules}
    return tuple(rules + [r for r in DEFAULT_SHARDING_RULES if r[0] not in named])


def max_predictions_per_seq(config: ml_collections.ConfigDict) -> int:
    """N = int((mask_prob + 0.005) * seq_len): 19 at 128, 79 at 512, 130 at 512 with 25%."""
    return int((config.objective.mask_prob + 0.005) * config.data.seq_len)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """What the jitted loss needs from the config, as a hashable value."""

    mask_prob: float
    max_predictions: int
    mask_token_prob: float
    with_replacement: bool
    gen_weight: float
    disc_weight: float
    temperature: float
    disallow_correct: bool
    sampler: str  # one of SAMPLERS
    mask_id: int
    never_mask_ids: tuple[int, ...]  # [CLS], [SEP], [MASK], [PAD]
    name: str = "electra"  # one of OBJECTIVES
    random_token_prob: float = 0.0
    vocab_size: int = 0  # random tokens are drawn from [0, vocab_size)


def objective_spec(config: ml_collections.ConfigDict) -> ObjectiveSpec:
    o, t = config.objective, config.tokens
    return ObjectiveSpec(
        mask_prob=o.mask_prob,
        max_predictions=max_predictions_per_seq(config),
        mask_token_prob=o.mask_token_prob,
        with_replacement=o.sample_with_replacement,
        gen_weight=o.gen_weight,
        disc_weight=o.disc_weight,
        temperature=o.temperature,
        disallow_correct=o.disallow_correct,
        sampler=o.sampler,
        mask_id=t.mask_id,
        never_mask_ids=tuple(sorted({t.cls_id, t.sep_id, t.mask_id, t.pad_id})),
        name=o.get("name", "electra"),
        random_token_prob=o.get("random_token_prob", 0.0),
        vocab_size=config.model.vocab_size,
    )


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Resolve the single -1 in the mesh sizes against the device count."""
    sizes = {a: int(config.mesh[a]) for a in MESH_AXES}
    dcn = int(config.mesh.get("dcn_data", 1))
    if dcn > 1 and sizes["data"] == 1:  # the default mesh across slices: data over DCN, FSDP inside
        sizes["data"] = dcn
    free = [a for a, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f"mesh: axis sizes must be positive or -1, got {sizes}")
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh: fixed axes {sizes} multiply to {fixed}, which does not divide the "
                f"{num_devices} devices")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"mesh: axes {sizes} multiply to {fixed} but there are {num_devices} devices; "
            "set one axis to -1 or make the product match")
    return sizes


# ----------------------------------------------------------------------------- validation


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def _check_encoder(enc: EncoderSpec, field: str) -> None:
    _check(enc.hidden_size > 0 and enc.num_layers > 0, field,
           f"gives an empty encoder ({enc}); use a larger value")
    _check(enc.hidden_size % enc.num_heads == 0, field,
           f"hidden size {enc.hidden_size} is not divisible by {enc.num_heads} heads")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raise ConfigError for a config that cannot run, before anything is compiled."""
    m, o, p = config.model, config.objective, config.optim
    for name in ("vocab_size", "vocab_multiple", "embedding_size", "hidden_size", "num_layers", "num_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        _check(int(m[name]) > 0, f"model.{name}", f"must be a positive integer, got {m[name]}")
    _check(m.hidden_size % m.num_heads == 0, "model.hidden_size",
           f"{m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
           f"allowed head counts: {[h for h in range(1, m.hidden_size + 1) if m.hidden_size % h == 0]}")
    _check(0 < m.generator_hidden_fraction <= 1, "model.generator_hidden_fraction",
           f"must be in (0, 1], got {m.generator_hidden_fraction}")
    _check(0 < m.generator_layers_fraction <= 1, "model.generator_layers_fraction",
           f"must be in (0, 1], got {m.generator_layers_fraction}")
    _check_encoder(generator_encoder(m), "model.generator_hidden_fraction")
    for name in ("dropout_rate", "attention_dropout_rate"):
        _check(0 <= m[name] < 1, f"model.{name}", f"must be in [0, 1), got {m[name]}")
    _check(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r} is not one of {DTYPES}")
    _check(config.get("eval_dtype", "") in ("", *DTYPES), "eval_dtype",
           f"{config.get('eval_dtype')!r} is not one of {DTYPES} or '' (the training dtype)")
    _check(m.remat_policy in REMAT_POLICIES, "model.remat_policy",
           f"{m.remat_policy!r} is not one of {REMAT_POLICIES}")
    _check(m.attention in ATTENTIONS, "model.attention", f"{m.attention!r} is not one of {ATTENTIONS}")
    _check(m.attention == "xla" or m.attention_dropout_rate == 0, "model.attention",
           f"{m.attention} attention has no dropout on the attention probabilities, but "
           f"model.attention_dropout_rate={m.attention_dropout_rate}; set it to 0 (a departure from "
           "the paper) or use model.attention=xla")
    _check(config.rng_impl in RNG_IMPLS, "rng_impl", f"{config.rng_impl!r} is not one of {RNG_IMPLS}")

    _check(config.data.seq_len >= 4, "data.seq_len", f"must be at least 4, got {config.data.seq_len}")
    _check(config.data.seq_len <= m.max_position_embeddings, "data.seq_len",
           f"{config.data.seq_len} exceeds model.max_position_embeddings="
           f"{m.max_position_embeddings}; lower seq_len or raise max_position_embeddings")

    t = config.tokens
    for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
        _check(0 <= t[name] < m.vocab_size, f"tokens.{name}",
               f"{t[name]} is outside the vocabulary [0, {m.vocab_size})")

    _check(0 < o.mask_prob < 1, "objective.mask_prob", f"must be in (0, 1), got {o.mask_prob}")
    name, random_prob = o.get("name", "electra"), o.get("random_token_prob", 0.0)  # older saved configs
    _check(name in OBJECTIVES, "objective.name", f"{name!r} is not one of {OBJECTIVES}")
    _check(0 <= o.mask_token_prob <= 1, "objective.mask_token_prob",
           f"must be in [0, 1], got {o.mask_token_prob}")
    _check(0 <= random_prob <= 1 - o.mask_token_prob, "objective.random_token_prob",
           f"must be in [0, 1 - mask_token_prob = {1 - o.mask_token_prob:g}], got {random_prob} "
           "(BERT: mask_token_prob=0.8, random_token_prob=0.1)")
    _check(o.temperature > 0, "objective.temperature", f"must be > 0, got {o.temperature}")
    _check(not (o.get("uniform_generator", False) and name == "mlm"), "objective.uniform_generator",
           "is an ELECTRA ablation; the \"mlm\" objective has no sampled fakes (set one or the other)")
    _check(o.sampler in SAMPLERS, "objective.sampler", f"{o.sampler!r} is not one of {SAMPLERS}")
    _check(max_predictions_per_seq(config) >= 1, "objective.mask_prob",
           f"{o.mask_prob} x seq_len {config.data.seq_len} leaves no slot to mask")

    _check(p.name in OPTIMIZERS, "optim.name", f"{p.name!r} is not one of {OPTIMIZERS}")
    _check(p.learning_rate > 0, "optim.learning_rate", f"must be > 0, got {p.learning_rate}")
    _check(p.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {p.warmup_steps}")
    _check(config.num_train_steps > 0, "num_train_steps",
           f"must be > 0, got {config.num_train_steps}")
    _check(0 <= p.b1 < 1 and 0 <= p.b2 < 1, "optim.b1/b2", f"must be in [0, 1), got {p.b1}, {p.b2}")
    _check(config.batch_size > 0, "batch_size", f"must be > 0, got {config.batch_size}")
    _check(config.micro_batches >= 1, "micro_batches", f"must be >= 1, got {config.micro_batches}")
    _check(p.skip_nonfinite >= 0, "optim.skip_nonfinite", f"must be >= 0, got {p.skip_nonfinite}")
    _check(p.grad_clip_norm >= 0, "optim.grad_clip_norm", f"must be >= 0 (0: no clipping), got {p.grad_clip_norm}")
    _check(0 < p.layerwise_lr_decay <= 1, "optim.layerwise_lr_decay",
           f"must be in (0, 1], got {p.layerwise_lr_decay}")
    _check(p.layerwise_depth in LAYERWISE_DEPTHS, "optim.layerwise_depth",
           f"{p.layerwise_depth!r} is not one of {LAYERWISE_DEPTHS}")
    if "head" in config:  # "" until `finetune` sets the task's
        _check(config.head in HEADS + ("",), "head", f"{config.head!r} is not one of {HEADS}")
    if "pooling" in config:
        _check(config.pooling in POOLINGS, "pooling", f"{config.pooling!r} is not one of {POOLINGS}")
    if "model_selection" in config:
        _check(config.model_selection in ("final", "best"), "model_selection",
               f"{config.model_selection!r} is not one of ('final', 'best')")
        _check(config.eval_every_epoch or config.model_selection == "final", "eval_every_epoch",
               "False needs model_selection=final (the best epoch is chosen by scoring every epoch)")
    if "loss_reduction" in config:
        _check(config.loss_reduction in ("sum", "mean"), "loss_reduction",
               f"{config.loss_reduction!r} is not one of ('sum', 'mean')")

    tr = config.train
    for name in ("log_every", "save_every", "keep_checkpoints"):
        _check(int(tr[name]) >= 1, f"train.{name}", f"must be >= 1, got {tr[name]}")
    for name in ("eval_every", "eval_batches", "profile_steps"):
        _check(int(tr[name]) >= 0, f"train.{name}", f"must be >= 0 (0: off / all), got {tr[name]}")

    mesh_axes = set(MESH_AXES)
    for rule in config.sharding_rules:
        targets = rule[1] if isinstance(rule[1], (list, tuple)) else [rule[1]]
        _check(all(x is None or x in mesh_axes for x in targets), "sharding_rules",
               f"rule {rule} names a mesh axis outside {MESH_AXES}")

    if num_devices is not None:
        try:
            sizes = mesh_shape(config, num_devices)
        except ConfigError as e:
            raise ConfigError(f"config.{e}") from None
        dcn = int(config.mesh.get("dcn_data", 1))
        _check(dcn >= 1 and sizes["data"] % dcn == 0, "mesh.dcn_data",
               f"{dcn} slices must divide the data axis ({sizes['data']})")
        batch_shards = sizes["data"] * sizes["fsdp"]
        _check(config.batch_size % batch_shards == 0, "batch_size",
               f"{config.batch_size} is not divisible by the data x fsdp mesh axes "
               f"({sizes['data']} x {sizes['fsdp']} = {batch_shards}); use a multiple of {batch_shards}")
        per_shard = config.batch_size // batch_shards
        _check(per_shard % config.micro_batches == 0, "micro_batches",
               f"{config.micro_batches} does not divide the per-device batch {per_shard} "
               f"(batch_size {config.batch_size} / {batch_shards} batch shards)")


# ----------------------------------------------------------------------------- loading


def presets() -> list[str]:
    """Names `--config` accepts besides a file: the shipped configs/ (tiny, small, ..., finetune/base)."""
    import importlib.resources

    root = importlib.resources.files("electra_jax.presets")
    names = []
    for folder, prefix in ((root, ""), (root / "finetune", "finetune/")):
        names += sorted(prefix + f.name[:-3] for f in folder.iterdir()
                        if f.name.endswith(".py") and not f.name.startswith("_"))
    return names


def find_config(path: str) -> str:
    """A config file for `--config`: an existing file (relative to the working directory, `~` ok), else a
    preset by name (`tiny`, `finetune/base`; `configs/tiny.py` also finds the preset from any
    directory). A `:arg` suffix (ml_collections' config argument) is kept."""
    import importlib.resources
    import os

    file, sep, arg = path.partition(":")
    local = os.path.abspath(os.path.expanduser(file))
    if os.path.isfile(local):
        return local + sep + arg
    name = file[len("configs/"):] if file.startswith("configs/") else file
    name = name[:-3] if name.endswith(".py") else name
    if name in presets():
        return str(importlib.resources.files("electra_jax.presets").joinpath(f"{name}.py")) + sep + arg
    raise ConfigError(f"--config {file!r}: no such file (looked in {os.getcwd()}) and no preset of that "
                      f"name; presets: {', '.join(presets())}")


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Load a config file or preset (`find_config`) and apply `--config.a.b=value` overrides
    (ml_collections' parser, as big_vision and the Flax examples). Raises ConfigError naming the file
    or the field."""
    from absl import flags
    from ml_collections import config_flags

    path = find_config(path)
    file = path.partition(":")[0]
    if not file.endswith(".py"):
        raise ConfigError(f"--config {file}: not a config file (a preset name, or a Python file defining "
                          f"get_config()); presets: {', '.join(presets())}")
    for arg in overrides:
        if not arg.startswith("--config."):
            raise ConfigError(f"override {arg!r} must look like --config.model.hidden_size=512")
    argv = ["electra-jax", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:
        raise ConfigError(_unknown_field_message(path, overrides, str(e).strip("\"'"))) from None
    except flags.Error as e:
        raise ConfigError(f"bad override: {e}") from None
    except Exception as e:  # the file itself raised (NameError, ImportError, ...) while loading
        raise ConfigError(f"--config {file}: {type(e).__name__}: {e} (while loading it)") from None
    config = values.config
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r} could not be loaded: define get_config() returning a ConfigDict")
    return config


def finetune_config() -> ml_collections.ConfigDict:
    """Fine-tuning defaults (google-research/electra `configure_finetuning.py`). Model fields and token
    ids come from the checkpoint given to `finetune --init`; num_train_steps and warmup from the data."""
    c = default_config()
    c.task = t = ml_collections.ConfigDict()
    t.name = ""  # a GLUE task (cola, sst2, ...), squad1 / squad2, or classification / regression / tagging / qa
    t.train = ""  # local files for the generic tasks (.csv/.tsv/.jsonl, CoNLL for tagging)
    t.dev = ""
    t.text_a = ""  # column names; defaults: sentence / (none) / label
    t.text_b = ""
    t.label = ""
    # CSV/TSV/JSONL rows that cannot be read as rows (wrong number of fields, an unclosed quote, a label
    # that looks like stray text) stop the run naming file and line; True skips them, counted and shown.
    t.skip_bad_rows = False
    t.max_len = 0  # 0: the task's (128; 512 for QA, as the original), at most the model's positions
    # Question answering (the original's configure_finetuning.py): the question's tokens, the step between
    # windows over a long context, answers up to 30 sub-tokens, 20 best spans, the joint head's beam of
    # 20 starts, and the weight of SQuAD 2.0's no-answer loss.
    t.max_query_len = 64
    t.doc_stride = 128
    t.max_answer_len = 30
    t.n_best = 20
    t.beam = 20
    t.no_answer_weight = 0.5
    # The no-answer head (the paper head's answerability classifier) is trained on every QA task, as the
    # original (answerable_classifier = True, its loss added with no SQuAD 2.0 check; on 1.1 the label is
    # always "answerable" and scoring does not use the head). False: only where the data has unanswerable
    # questions.
    t.answerable_classifier = True
    # SQuAD 2.0: a question is answered "" when its no-answer score is above this; the original scores its
    # dev set at -2.75 (qa_na_threshold, passed to squad_official_eval.py as na_prob_thresh).
    t.qa_na_threshold = -2.75
    t.tfds_data_dir = ""
    t.download = False  # let TFDS download GLUE (needs network)
    t.double_unordered = True  # MRPC and STS-B: train on each pair in both orders, as the original
    # Recorded by `finetune` for export: where the model came from, its tokenizer, the classes.
    t.init = ""
    t.tokenizer = ""
    t.labels = ml_collections.FieldReference([], field_type=list)
    t.random_init = False
    t.answerable = False  # QA: the model has a no-answer head (see answerable_classifier)
    t.unanswerable = False  # QA: the training data had unanswerable questions: "" is predicted and scored
    # Fingerprints of the encoded task data and of the init weights: a rerun into the workdir resumes only
    # when both are the same (an edited file or a further-trained init is another run).
    t.data_fingerprint = ""
    t.init_fingerprint = ""
    # "paper": [CLS] -> dropout -> dense (QA: the joint span head); "hf": ElectraClassificationHead (QA:
    # ElectraForQuestionAnswering's), which exports to transformers. "": the task's, set by `finetune`:
    # the paper's for GLUE and SQuAD (as the original), "hf" for file tasks (users want a transformers model).
    c.head = ""
    # File tasks (classification / regression / tagging / qa) train at least this many steps: the
    # original's 3 epochs are for GLUE-sized sets, and a few hundred rows x 3 epochs leave a model at the
    # majority class. GLUE and SQuAD keep the original's epochs; --config.num_epochs sets epochs exactly.
    c.min_steps = 500
    # Sentence-level tasks: the head reads [CLS] ("cls", the original's) or the mean of the non-padding
    # token vectors ("mean": no Hugging Face class has it, so such a model does not export).
    c.pooling = "cls"
    c.loss_reduction = "sum"  # the original sums per-example losses over the batch; "mean" divides
    c.model_selection = "final"  # the final epoch, as the paper; "best": the best dev epoch (optimistic)
    c.eval_every_epoch = True  # False: score the dev set only after the last epoch (model_selection final)
    # Dev scores and predictions (and `predict`) compute in this dtype: float32, what the export gives in
    # transformers, whatever the training dtype; "" evaluates in model.dtype.
    c.eval_dtype = "float32"
    # GLUE: after fine-tuning, the best seed's test-set predictions as the benchmark's submission files
    # (WORKDIR/test/<Task>.tsv), the original's write_test_outputs.
    c.write_test = False
    c.num_epochs = 0  # 0: the task's own (3; 10 for RTE and STS-B; 2 for QA)
    c.batch_size = 32
    c.optim.update(name="electra_adam", learning_rate=1e-4, weight_decay=0.01, layerwise_lr_decay=0.8,
                   warmup_steps=0)
    c.optim.warmup_fraction = 0.1
    c.train.update(log_every=50, keep_checkpoints=1)
    return c


def _field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, f"{prefix}{key}.")
    return names


def _unknown_field_message(path: str, overrides, fallback: str) -> str:
    """Which override names no field, and the nearest field that exists (a typo, usually)."""
    import difflib

    try:
        known = _field_names(load_config(path))
    except ConfigError:
        return f"override names a field that {path} does not have: {fallback!r}"
    for arg in overrides:
        name = arg[len("--config."):].split("=", 1)[0]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"; did you mean --config.{close[0]}?" if close else ""
            return f"{path} has no field {name!r}{hint}"
    return f"override names a field that {path} does not have: {fallback!r}"


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved, over today's defaults (so fields added since then have values)."""
    import json
    import os

    from electra_jax.fs import exists, read_text

    path = os.path.join(workdir, "config.json")
    if not exists(path):
        raise ConfigError(f"{workdir}: no config.json; is this a pretrain or finetune --workdir?")
    saved = json.loads(read_text(path))
    config = finetune_config() if "task" in saved else default_config()

    def merge(into: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(key), ml_collections.ConfigDict):
                merge(into[key], value)
            else:
                with into.ignore_type():
                    into[key] = value

    merge(config, saved)
    return config
