"""Train state, the pure train step, and its sharded compilation.

    state, metrics = train_step(state, batch, rng)

`rng` is the run's base key; the step folds in `state.step`, so randomness depends only on
(seed, step) and a resumed run repeats an uninterrupted one exactly. Nothing is drawn on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import os
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
from electra_jax.objective import electra_loss, summarize
from electra_jax.optim import make_optimizer
from electra_jax.sharding import batch_sharding, logical_rules, make_mesh, replicated, shardings_for


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: Electra,
               tx: optax.GradientTransformation, spec: config_lib.ObjectiveSpec,
               schedule: optax.Schedule) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch {input_ids, input_mask, segment_ids} [B, S]."""
    step_rng = jax.random.fold_in(rng, state.step)
    loss_fn = functools.partial(electra_loss, model=model, spec=spec)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = summarize(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from a config for training on a mesh; `init` and `step` are jitted and sharded."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model: Electra
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: Any
    batch_sharding: NamedSharding
    init: Callable[[jax.Array], TrainState]  # init(init_rng) -> sharded TrainState
    step: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it (the target for restores)."""
        init_rng, _ = self.rngs()
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            jax.eval_shape(self.init, init_rng), self.state_shardings)

    def rngs(self) -> tuple[jax.Array, jax.Array]:
        """(init_rng, train_rng) from the config seed, in the configured PRNG implementation."""
        base = jax.random.key(self.config.seed, impl=self.config.rng_impl)
        return jax.random.split(base)


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
    """Validate the config, build the mesh, model and optimizer, and jit init and step with shardings."""
    devices = list(devices if devices is not None else jax.devices())
    config_lib.validate(config, num_devices=len(devices))
    mesh = make_mesh(config, devices)
    rules = logical_rules(config)
    model = Electra(config_lib.model_spec(config))
    tx, schedule = make_optimizer(config)
    spec = config_lib.objective_spec(config)
    seq_len = config.data.seq_len

    def boxed_init(rng):
        params = init_params(model, rng, seq_len, spec.max_predictions)
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

    abstract_rng = jax.eval_shape(lambda: jax.random.key(0, impl=config.rng_impl))
    state_shardings = shardings_for(jax.eval_shape(boxed_init, abstract_rng), mesh, rules)
    init = jax.jit(lambda rng: nn.unbox(boxed_init(rng)), out_shardings=state_shardings)

    batch_sh = batch_sharding(mesh, rules)
    step = jax.jit(
        functools.partial(train_step, model=model, tx=tx, spec=spec, schedule=schedule),
        in_shardings=(state_shardings, batch_sh, replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
    return Setup(config, mesh, model, tx, schedule, state_shardings, batch_sh, init, step)


# ============================================================================ the pretraining loop


class TrainingError(RuntimeError):
    """The run cannot go on (NaN, incompatible checkpoint, bad data); the message says what to do."""


MODEL_FIELDS_THAT_MUST_MATCH = ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
                                "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                "generator_hidden_fraction", "generator_layers_fraction", "scan_layers")


def _check_data(config, manifest: dict) -> None:
    sp, t = manifest["special_ids"], config.tokens
    if manifest["vocab_size"] > config.model.vocab_size:
        raise TrainingError(f"the data's tokenizer has {manifest['vocab_size']} tokens but "
                            f"config.model.vocab_size is {config.model.vocab_size}; raise it")
    wrong = [f"tokens.{k}_id={t[k + '_id']} (data: {sp[k]})" for k in ("pad", "cls", "sep", "mask")
             if sp[k] != t[k + "_id"]]
    if wrong:
        raise TrainingError(f"special token ids differ from the data's tokenizer: {', '.join(wrong)}; "
                            "set them with --config.tokens.<name>_id")


def _check_checkpoint(config, meta: dict, workdir: str) -> None:
    saved = meta.get("model", {})
    differ = [f"{k}: checkpoint {saved[k]!r}, config {config.model[k]!r}"
              for k in MODEL_FIELDS_THAT_MUST_MATCH if k in saved and saved[k] != config.model[k]]
    if differ:
        raise TrainingError(f"{workdir} holds a checkpoint of a different model ({'; '.join(differ)}); "
                            "use another --workdir or the checkpoint's config")


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, max_steps: int | None = None,
             devices=None, progress: bool = True, handle_sigterm: bool = True) -> dict:
    """Pretrain until config.num_train_steps (or `max_steps`), resuming from the latest checkpoint.

    Returns the last logged train metrics and eval metrics. SIGTERM (and orbax's multi-host
    preemption notice) saves the current step, waits for it and returns.
    """
    import json
    import signal
    import time

    import numpy as np

    from electra_jax.checkpoint import Checkpoints
    from electra_jax.data.reader import Reader, eval_dataset, open_build, train_dataset
    from electra_jax.objective import eval_metrics, eval_statistics

    if not config.data.path:
        raise TrainingError("no training data: pass --config.data.path=DIR (a `build-data` output)")
    manifest = open_build(config.data.path, seq_len=config.data.seq_len)
    _check_data(config, manifest)
    s = setup(config, devices)
    tc = config.train
    lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))

    init_rng, train_rng = s.rngs()
    reader = Reader(train_dataset(config.data.path, config.batch_size, config.seed,
                                  shuffle_buffer=config.data.shuffle_buffer), s.batch_sharding)
    checkpoints = Checkpoints(workdir, tc.keep_checkpoints, tc.async_checkpoints)
    meta = {"model": config.model.to_dict(), "data": config.data.path,
            "tokenizer_fingerprint": manifest["tokenizer_fingerprint"]}
    latest = checkpoints.latest_step()
    if latest is None:
        state = s.init(init_rng)
    else:
        _check_checkpoint(config, checkpoints.meta(latest), workdir)
        state = checkpoints.restore(latest, s.abstract_state(), reader)
    step = int(state.step)
    last = min(config.num_train_steps, max_steps or config.num_train_steps)

    evaluate_batch = jax.jit(
        functools.partial(eval_statistics, model=s.model, spec=config_lib.objective_spec(config)),
        in_shardings=(s.state_shardings.params, s.batch_sharding, replicated(s.mesh)),
        out_shardings=replicated(s.mesh))
    eval_rng = jax.random.key(config.seed + 1, impl=config.rng_impl)  # fixed: eval is deterministic

    def evaluate(params) -> dict:
        total = None
        batches = eval_dataset(config.data.path, config.batch_size).as_numpy_iterator()
        for i, host_batch in enumerate(batches):
            if tc.eval_batches and i >= tc.eval_batches:
                break
            batch = {k: jax.make_array_from_process_local_data(s.batch_sharding, v)
                     for k, v in host_batch.items()}
            stats = jax.device_get(evaluate_batch(params, batch, eval_rng))
            total = stats if total is None else jax.tree.map(np.add, total, stats)
        return eval_metrics(total)

    log_path = os.path.join(workdir, "metrics.jsonl")

    def write(record: dict) -> None:
        if lead:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    stop = {"signal": False}
    if handle_sigterm:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))

    from tqdm import tqdm

    bar = tqdm(total=last, initial=step, unit="step", disable=not (progress and lead), dynamic_ncols=True)
    tokens_per_step = config.batch_size * config.data.seq_len
    pending = None  # (step, metrics) fetched one step late, so the host never stalls the device
    logged, evaluated = {}, {}
    tick, tick_step = time.perf_counter(), step
    has_eval = "eval" in manifest["splits"]

    def flush(entry) -> dict:
        at, metrics = entry
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
            raise TrainingError(f"loss or gradients are not finite at step {at} (loss {values['loss']}, "
                                f"grad norm {values['grad_norm']}); the last good checkpoint is step "
                                f"{checkpoints.latest_step()}. Lower the learning rate or check the data.")
        return values

    try:
        while step < last:
            batch = next(reader)
            state, metrics = s.step(state, batch, train_rng)
            step += 1
            if pending is not None:
                at = pending[0]
                logged = flush(pending)
                now = time.perf_counter()
                logged["tokens_per_s"] = (at - tick_step) * tokens_per_step / max(now - tick, 1e-9)
                tick, tick_step = now, at
                write({"step": at, "split": "train", **logged})
                bar.set_postfix(loss=f"{logged['loss']:.3f}", tok_s=f"{logged['tokens_per_s']:,.0f}")
                pending = None
            if step % tc.log_every == 0 or step == last:
                pending = (step, metrics)
            bar.update(1)
            preempted = stop["signal"] or checkpoints.reached_preemption(step)
            if step % tc.save_every == 0 or step == last or preempted:
                flush((step, metrics))  # never save a non-finite state
                checkpoints.save(step, state, meta, reader)
            if has_eval and tc.eval_every and (step % tc.eval_every == 0 or step == last):
                evaluated = evaluate(state.params)
                write({"step": step, "split": "eval", **evaluated})
            if preempted:
                bar.write(f"preempted: saved step {step}; rerun the same command to resume")
                break
        if pending is not None:
            logged = flush(pending)
            write({"step": pending[0], "split": "train", **logged})
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        if handle_sigterm:
            signal.signal(signal.SIGTERM, previous)
    return {"step": step, "train": logged, "eval": evaluated}


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise TrainingError(f"{workdir}: no config.json; is this a pretrain --workdir?")
    import json

    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int, Any]:
    """(config, step, params as numpy) from a pretrain workdir, on this host's first device."""
    from electra_jax.checkpoint import Checkpoints

    config = load_workdir_config(workdir)
    checkpoints = Checkpoints(workdir, async_save=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise TrainingError(f"{workdir}: no checkpoints yet")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise TrainingError(f"{workdir}: no checkpoint at step {step}; there are {steps}")
    config.mesh.update(data=-1, fsdp=1, tensor=1)  # export on whatever this machine has
    state = checkpoints.restore(step, setup(config, jax.devices()[:1]).abstract_state())
    checkpoints.close()
    return config, step, jax.tree.map(lambda x: jax.device_get(x), state.params)
