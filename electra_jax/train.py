"""Train state, the pure train step, and its sharded compilation.

    state, metrics = train_step(state, batch, rng)

`rng` is the run's base key; the step folds in `state.step`, so randomness depends only on
(seed, step) and a resumed run repeats an uninterrupted one exactly. Nothing is drawn on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from electra_jax import config as config_lib
from electra_jax.model import Electra, init_params
from electra_jax.objective import electra_loss, mask_batch, summarize
from electra_jax.optim import make_optimizer
from electra_jax.sharding import (batch_sharding, make_mesh, replicated, shardings_for,
                                  with_activation_layout)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def gradients(params, batch: dict, rng: jax.Array, constrain: Callable = lambda tree: tree, *, model: Electra,
              spec: config_lib.ObjectiveSpec, micro_batches: int = 1) -> tuple[Any, dict]:
    """(grads, {name: [num, den]}) of the ELECTRA loss on a global batch, optionally in micro-batches.

    With micro-batches the whole batch is masked first, exactly as without, and each micro-batch's
    loss is normalised by the whole batch's counts, so the summed gradient is the whole batch's
    gradient (only dropout and sampling draw different numbers). Micro-batch i takes rows i, i+k,
    i+2k, ...: every device keeps its rows and no data moves. The sum is kept in float32 (gradients of
    bf16 parameter copies arrive in bf16) and laid out as the parameters (`constrain`), so under FSDP
    each chip accumulates only its shard.
    """
    grad_fn = jax.value_and_grad(functools.partial(electra_loss, model=model, spec=spec), has_aux=True)
    if micro_batches == 1:
        (_, metrics), grads = grad_fn(params, batch, rng)
        return grads, metrics

    masked = mask_batch(rng, batch, spec)
    totals = (jnp.sum(masked.weights), jnp.sum(batch["input_mask"].astype(jnp.float32)))
    strided = lambda x: jnp.swapaxes(x.reshape(-1, micro_batches, *x.shape[1:]), 0, 1)
    micro = jax.tree.map(strided, (batch, masked))

    def accumulate(carry, inputs):
        i, (b, m) = inputs
        (_, metrics), grads = grad_fn(params, b, jax.random.fold_in(rng, i), masked=m, totals=totals)
        grads = constrain(jax.tree.map(lambda g, acc: acc + g.astype(acc.dtype), grads, carry[0]))
        return (grads, jax.tree.map(jnp.add, carry[1], metrics)), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(params, first[0], rng, masked=first[1], totals=totals))
    wide = lambda x: jnp.zeros(x.shape, jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype)
    zeros = (constrain(jax.tree.map(wide, shapes[1])), jax.tree.map(wide, shapes[0][1]))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(micro_batches), micro))
    for name in ("loss", "mlm_loss", "disc_loss"):  # summed shares of one whole-batch value
        if name in metrics:
            metrics[name] = metrics[name].at[1].set(1.0)
    return grads, metrics


def cast_for_compute(params, dtype, constrain: Callable = lambda tree: tree):
    """float32 weight matrices (ndim >= 2) as `dtype` copies laid out as the parameters themselves, so
    the cast happens on each chip's shard and FSDP gathers `dtype` (bf16: half the bytes of gathering
    float32 and casting at use); vectors (biases, LayerNorm) stay float32. The identity for float32."""
    if jnp.dtype(dtype) == jnp.float32:
        return params
    low = lambda p: p.astype(dtype) if p.dtype == jnp.float32 and p.ndim >= 2 else p
    return constrain(jax.tree.map(low, params))


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, grad_fn: Callable,
               tx: optax.GradientTransformation, schedule: optax.Schedule, compute_dtype: str = "float32",
               constrain: Callable = lambda tree: tree, param_norm: bool = True) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch; `grad_fn(params, batch, rng, constrain) -> (grads, {name:
    [num, den]})` is the task (`gradients` for ELECTRA pretraining, a classifier loss for fine-tuning).
    The task sees the parameters cast to `compute_dtype` (`cast_for_compute`); its gradients, taken
    with respect to those copies, are the float32 parameters' (the transpose of a cast is a cast).
    `constrain` lays a parameter-shaped tree out as the parameters. `param_norm` False drops that
    metric (a reduction over every parameter each step) and its non-finite check."""
    step_rng = jax.random.fold_in(rng, state.step)
    grads, metrics = grad_fn(cast_for_compute(state.params, compute_dtype, constrain), batch, step_rng,
                             constrain)
    grads = constrain(jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params))
    with jax.named_scope("optimizer"):  # named scopes label the ops in profiles (bench --profile)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
    metrics = summarize(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if param_norm:
        metrics["param_norm"] = optax.tree.norm(params)  # an overflowing norm means a broken state
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    if isinstance(opt_state, optax.ApplyIfFiniteState):  # config.optim.skip_nonfinite > 0
        metrics["skipped_steps"] = opt_state.total_notfinite.astype(jnp.float32)
        metrics["consecutive_skipped"] = opt_state.notfinite_count.astype(jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from a config for training on a mesh; `init` and `step` are jitted and sharded."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: Any
    logical_state: Any  # the state's shapes with their logical axis names (nn.LogicallyPartitioned)
    batch_sharding: NamedSharding
    rng_impl: str  # config.rng_impl for these devices ("auto" resolved)
    init: Callable[[jax.Array], TrainState]  # init(init_rng) -> sharded TrainState
    step: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it (the target for restores)."""
        init_rng, _ = self.rngs()
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            jax.eval_shape(self.init, init_rng), self.state_shardings)

    def state_from_params(self, params) -> TrainState:
        """A step-0 state holding `params` (e.g. pretrained weights) with a fresh optimizer state."""
        params = jax.device_put(params, self.state_shardings.params)
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
        step = jax.device_put(jnp.zeros([], jnp.int32), self.state_shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state)

    def rngs(self) -> tuple[jax.Array, jax.Array]:
        """(init_rng, train_rng) from the config seed, in the configured PRNG implementation."""
        base = jax.random.key(self.config.seed, impl=self.rng_impl)
        return jax.random.split(base)


def build(config: ml_collections.ConfigDict, devices, model: nn.Module, init_fn: Callable,
          grad_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule) -> Setup:
    """Mesh from the config; `init_fn(rng) -> boxed params` and `train_step(grad_fn)` jitted with
    shardings from the parameters' logical axes; the state is created sharded and donated to the step."""
    mesh = make_mesh(config, devices)
    rules = config_lib.logical_rules(config)

    def boxed_init(rng):
        params = init_fn(rng)
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

    rng_impl = config_lib.resolve_rng_impl(config, mesh.devices.flat[0].platform)
    abstract_rng = jax.eval_shape(lambda: jax.random.key(0, impl=rng_impl))
    logical_state = jax.eval_shape(boxed_init, abstract_rng)
    state_shardings = shardings_for(logical_state, mesh, rules)
    init = jax.jit(lambda rng: nn.unbox(boxed_init(rng)), out_shardings=state_shardings)

    batch_sh = batch_sharding(mesh, rules)
    constrain = functools.partial(jax.lax.with_sharding_constraint, shardings=state_shardings.params)
    compute_dtype = config.model.dtype if config.model.get("cast_params", True) else "float32"
    step = jax.jit(
        with_activation_layout(functools.partial(
            train_step, grad_fn=grad_fn, tx=tx, schedule=schedule, compute_dtype=compute_dtype,
            constrain=constrain, param_norm=config.train.get("param_norm", True)), mesh),
        in_shardings=(state_shardings, batch_sh, replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
    return Setup(config, mesh, model, tx, schedule, state_shardings, logical_state, batch_sh, rng_impl, init, step)


def abstract_batch(config: ml_collections.ConfigDict, sharding: NamedSharding) -> dict:
    """A pretraining batch's shapes, dtypes and layout (nothing allocated): what `step` is lowered with."""
    shape = (config.batch_size, config.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
            for k in ("input_ids", "input_mask", "segment_ids")}


def peak_bytes(compiled) -> int:
    """Per-device memory of a compiled step: arguments + outputs - donated aliases + temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def with_remat(config: ml_collections.ConfigDict, policy: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.remat_policy = policy
    return c


def out_of_memory(error: Exception) -> bool:
    """Whether a compile failed because the program does not fit (the TPU compiler refuses it)."""
    return "RESOURCE_EXHAUSTED" in str(error) or "Ran out of memory" in str(error)


def compiled_peak(config: ml_collections.ConfigDict, devices) -> int | None:
    """Per-device bytes of the compiled pretraining step, or None where XLA refuses it (out of memory)."""
    s = setup(config, devices)
    init_rng, _ = s.rngs()
    try:
        compiled = s.step.lower(s.abstract_state(), abstract_batch(config, s.batch_sharding),
                                jax.eval_shape(lambda: init_rng)).compile()
    except Exception as e:  # XLA's out-of-memory refusal is an answer
        if not out_of_memory(e):
            raise
        return None
    return peak_bytes(compiled)


REMAT_ORDER = ("none", "dots", "full")  # fastest (most memory) first


def fitting_remat(config: ml_collections.ConfigDict, devices, budget_bytes: int | None = None,
                  peak_fn: Callable | None = None, log: Callable[[str], None] = lambda line: None) -> str:
    """remat_policy "auto" for these devices: the first of REMAT_ORDER whose compiled pretraining step
    needs at most 95% of `budget_bytes` per device (default: what the device's allocator may use), so
    the choice is XLA's measured memory, not an estimate. CPU: none. `peak_fn(config) -> bytes | None`
    replaces the compile (`plan` keeps what it compiles)."""
    if devices[0].platform == "cpu":
        return "none"
    if budget_bytes is None:
        # This process's own chip (every process then asks the same of its own, and the hosts of a
        # slice agree); a compile-only topology has none to ask, and gets the safe policy.
        local = [d for d in devices if d.process_index == jax.process_index()]
        try:
            budget_bytes = (local[0].memory_stats() or {}).get("bytes_limit") if local else None
        except Exception:
            budget_bytes = None
    if not budget_bytes:
        return "full"
    for policy in REMAT_ORDER:
        peak = (peak_fn or (lambda c: compiled_peak(c, devices)))(with_remat(config, policy))
        log(f"  remat {policy}: " + ("does not fit (XLA refused)" if peak is None else
                                     f"{peak / 2**30:.2f} GiB of {budget_bytes / 2**30:.2f} per device"))
        if peak is not None and peak <= 0.95 * budget_bytes:
            return policy
    return "full"


def setup(config: ml_collections.ConfigDict, devices=None, steps: bool = True) -> Setup:
    """ELECTRA pretraining: validate the config, then build the model, optimizer and sharded step.
    remat_policy "auto" is resolved here by compiling (`fitting_remat`), unless `steps` is False: a
    caller that only needs the state's shapes and shardings (restore, import) compiles nothing."""
    devices = list(devices if devices is not None else jax.devices())
    config_lib.validate(config, num_devices=len(devices))
    if config.model.remat_policy == "auto":
        config = with_remat(config, fitting_remat(config, devices) if steps else "none")
    model = Electra(config_lib.model_spec(config, devices[0].platform))
    tx, schedule = make_optimizer(config)
    spec = config_lib.objective_spec(config)
    init_fn = functools.partial(init_params, model, seq_len=config.data.seq_len,
                                num_positions=spec.max_predictions)
    grad_fn = functools.partial(gradients, model=model, spec=spec, micro_batches=config.micro_batches)
    return build(config, devices, model, init_fn, grad_fn, tx, schedule)
