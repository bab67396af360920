"""The pretraining loop: data in, checkpoints, evaluation and metrics out.

    pretrain(config, workdir)  # resumes from the latest checkpoint in workdir

The host only feeds batches, and reads a step's metrics after the next step is queued, so the device
never waits on the host.
Every check that can fail (data, checkpoint, workdir) runs before the first step compiles.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from electra_jax import config as config_lib
from electra_jax import flops
from electra_jax.checkpoint import Checkpoints
from electra_jax.errors import UserError
from electra_jax.fs import exists, host_tf, is_remote, read_text, split_step, writable_dir, write_text_atomic
from electra_jax.objective import eval_metrics, eval_statistics
from electra_jax.sharding import replicated, with_activation_layout
from electra_jax.signals import StopRequest
from electra_jax.train import Setup, setup
from electra_jax.writers import MetricWriter, Progress


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (NaN, incompatible checkpoint, bad data or workdir); says what to do."""


TOKENIZER_FILE = "tokenizer.json"  # in a workdir: the model's tokenizer (the latest checkpoint's)
TOKENIZER_ARCHIVE = "tokenizers"  # <fingerprint>.json: earlier ones, when data.change_tokenizer switched
MODEL_FIELDS_THAT_MUST_MATCH = ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
                                "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                "generator_hidden_fraction", "generator_layers_fraction", "scan_layers")


def check_data(config, manifest: dict) -> None:
    sp, t = manifest["special_ids"], config.tokens
    if manifest["vocab_size"] > config.model.vocab_size:
        raise TrainingError(f"the data's tokenizer has {manifest['vocab_size']} tokens but "
                            f"config.model.vocab_size is {config.model.vocab_size}; raise it")
    wrong = [f"tokens.{k}_id={t[k + '_id']} (data: {sp[k]})" for k in ("pad", "cls", "sep", "mask")
             if sp[k] != t[k + "_id"]]
    if wrong:
        raise TrainingError(f"special token ids differ from the data's tokenizer: {', '.join(wrong)}; "
                            "set them with --config.tokens.<name>_id")


def check_checkpoint(config, meta: dict, workdir: str) -> None:
    saved = meta.get("model", {})
    differ = [f"{k}: checkpoint {saved[k]!r}, config {config.model[k]!r}"
              for k in MODEL_FIELDS_THAT_MUST_MATCH if k in saved and saved[k] != config.model[k]]
    if differ:
        raise TrainingError(f"{workdir} holds a checkpoint of a different model ({'; '.join(differ)}); "
                            "use another --workdir or the checkpoint's config")


def check_workdir(workdir: str, checkpoint_bytes: int) -> None:
    """Writable, with room for one more checkpoint: fail now, not hours later at the first save."""
    writable_dir(workdir, "--workdir")
    if is_remote(workdir):
        return
    free = shutil.disk_usage(workdir).free
    if free < 1.2 * checkpoint_bytes:
        raise TrainingError(f"--workdir {workdir} has {free / 2**30:.2f} GiB free but one checkpoint "
                            f"needs {checkpoint_bytes / 2**30:.2f} GiB; free space or use another disk")


def write_config(config, workdir: str) -> None:
    write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))


def write_tokenizer(tokenizer_path: str, workdir: str) -> None:
    """WORKDIR/tokenizer.json: the model's tokenizer travels with its checkpoints (export, detect and
    finetune --init read it; an imported pair has no data build to find it in)."""
    from electra_jax.data.tokenizer import load_tokenizer

    write_text_atomic(os.path.join(workdir, TOKENIZER_FILE), load_tokenizer(tokenizer_path).to_str())


def tokenizer_fingerprint(path: str) -> str:
    from electra_jax.data.tokenizer import fingerprint, load_tokenizer

    return fingerprint(load_tokenizer(path))


def _archived_tokenizer(workdir: str, fingerprint: str) -> str:
    return os.path.join(workdir, TOKENIZER_ARCHIVE, f"{fingerprint}.json")


def _tokenizer_difference(a: str, b: str) -> str:
    """What differs between two tokenizers, in words (the vocabulary, or only the text pipeline)."""
    from electra_jax.data.tokenizer import load_tokenizer

    va, vb = load_tokenizer(a).get_vocab(), load_tokenizer(b).get_vocab()
    if va == vb:
        return "the vocabularies are the same but the text pipeline (normaliser, pre-tokeniser, ...) differs"
    moved = sum(1 for token, i in va.items() if vb.get(token) != i)
    return (f"the vocabularies differ ({len(va):,} and {len(vb):,} tokens; {moved:,} of the first's have "
            "another id or none in the second)")


def check_tokenizer(config, workdir: str, saved: dict | None, latest: int | None, data_tokenizer: str,
                    data_fingerprint: str) -> None:
    """Refuse to continue a checkpoint on data made with another tokenizer (its embeddings are rows of
    its own vocabulary: a swapped one trains on, exit 0, into nonsense) unless data.change_tokenizer."""
    if saved is None:
        return
    own = os.path.join(workdir, TOKENIZER_FILE)
    trained = saved.get("tokenizer_fingerprint") or (tokenizer_fingerprint(own) if exists(own) else None)
    if trained is None or trained == data_fingerprint or config.data.change_tokenizer:
        return
    path = next((p for p in (own, _archived_tokenizer(workdir, trained))
                 if exists(p) and tokenizer_fingerprint(p) == trained), None)
    difference = f"; {_tokenizer_difference(path, data_tokenizer)}" if path else ""
    raise TrainingError(
        f"{workdir}: step {latest} was trained with tokenizer {trained}"
        f"{f' ({path})' if path else ''} but {config.data.path} was built with tokenizer "
        f"{data_fingerprint}{difference}. Rebuild the data with `electra-jax build-data --tokenizer "
        f"{path or own} ...`, use another --workdir, or pass --config.data.change_tokenizer=True to "
        "continue on the new vocabulary anyway (each checkpoint keeps exporting with its own)")


def save_workdir_tokenizer(workdir: str, data_tokenizer: str, data_fingerprint: str, has_checkpoints: bool):
    """Make the data's tokenizer the workdir's; one that earlier checkpoints were trained with is kept
    as tokenizers/<fingerprint>.json, where `workdir_tokenizer` finds it for them."""
    own = os.path.join(workdir, TOKENIZER_FILE)
    if has_checkpoints and exists(own):
        previous = tokenizer_fingerprint(own)
        if previous != data_fingerprint:
            host_tf().io.gfile.makedirs(os.path.join(workdir, TOKENIZER_ARCHIVE))
            write_text_atomic(_archived_tokenizer(workdir, previous), read_text(own))
    write_tokenizer(data_tokenizer, workdir)


def checkpoint_tokenizer_fingerprint(workdir: str, step: int) -> str | None:
    """The fingerprint of the tokenizer checkpoint `step` was trained with (None: saved before it was
    recorded, or an import without tokenizer files)."""
    checkpoints = Checkpoints(workdir, async_save=False)
    try:
        return checkpoints.meta(step).get("tokenizer_fingerprint")
    finally:
        checkpoints.close()


def workdir_tokenizer(workdir: str, config, step: int | None = None) -> str:
    """The tokenizer of a pretrain workdir's model (of checkpoint `step` when given): its own copy (or
    the archived one the step was trained with), else (workdirs from before the copy) the one its data
    was built with. A step whose tokenizer is nowhere to be found is refused: never the wrong vocabulary."""
    from electra_jax.data.reader import build_tokenizer, open_build

    own = os.path.join(workdir, TOKENIZER_FILE)
    wanted = checkpoint_tokenizer_fingerprint(workdir, step) if step is not None else None
    if wanted is None:
        if exists(own):
            return own
    else:
        for path in (own, _archived_tokenizer(workdir, wanted)):
            if exists(path) and tokenizer_fingerprint(path) == wanted:
                return path
    if not config.data.path:
        raise TrainingError(f"{workdir}: no {TOKENIZER_FILE} and no data in its config.json, so its "
                            "tokenizer is unknown; copy the tokenizer.json it was trained with there")
    data = build_tokenizer(config.data.path, open_build(config.data.path)) if exists(config.data.path) else None
    if wanted is None and data is not None:
        return data
    if data is not None and tokenizer_fingerprint(data) == wanted:
        return data
    raise TrainingError(
        f"{workdir}: step {step} was trained with tokenizer {wanted}, which is not in the workdir ({own} is "
        f"{tokenizer_fingerprint(own) if exists(own) else 'missing'}); copy the tokenizer.json of the data "
        f"build it was trained on (its manifest.json says tokenizer_fingerprint {wanted}) to "
        f"{_archived_tokenizer(workdir, wanted)}")


# Metrics reported at their latest value rather than averaged over the log interval.
LATEST_VALUE_METRICS = ("learning_rate", "skipped_steps", "consecutive_skipped")


def check_finite(metrics: dict, step: int, last_good: int | None, skip_limit: int = 0) -> dict:
    """Host floats of a step's metrics, or TrainingError when the step broke the state: a non-finite
    loss or gradient (or, with `skip_limit`, more than that many skipped steps in a row) or parameters."""
    values = {k: float(v) for k, v in metrics.items()}
    if skip_limit:  # bad steps were skipped; only a run of more than skip_limit got applied
        bad = values["consecutive_skipped"] > skip_limit
    else:
        bad = not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"]))
    if bad or not np.isfinite(values.get("param_norm", 0.0)):
        raise TrainingError(
            f"loss, gradients or parameters are not finite at step {step} (loss {values['loss']}, "
            f"grad norm {values['grad_norm']}, param norm {values.get('param_norm', 'not measured')}); the last good "
            f"checkpoint is step {last_good}. Lower optim.learning_rate, check the data, or set "
            "optim.skip_nonfinite=N to skip up to N bad steps in a row.")
    return values


class _Evaluator:
    """Deterministic eval on the held-out split: fixed PRNG, no dropout, the original's metrics."""

    def __init__(self, s: Setup, config):
        self.s, self.config = s, config
        self.step = jax.jit(
            with_activation_layout(functools.partial(eval_statistics, model=s.model,
                                                     spec=config_lib.objective_spec(config)),
                                   s.mesh),
            in_shardings=(s.state_shardings.params, s.batch_sharding, replicated(s.mesh)),
            out_shardings=replicated(s.mesh))
        self.rng = jax.random.key(config.seed + 1, impl=s.rng_impl)

    def __call__(self, params) -> dict:
        from electra_jax.data.reader import eval_dataset

        total, limit = None, self.config.train.eval_batches
        batches = eval_dataset(self.config.data.path, self.config.batch_size).as_numpy_iterator()
        for i, host_batch in enumerate(batches):
            if limit and i >= limit:
                break
            batch = {k: jax.make_array_from_process_local_data(self.s.batch_sharding, v)
                     for k, v in host_batch.items()}
            # Fixed across evaluations (comparable curves), different for each batch (else row j of
            # every batch would get the same mask positions and samples).
            stats = jax.device_get(self.step(params, batch, jax.random.fold_in(self.rng, i)))
            total = stats if total is None else jax.tree.map(np.add, total, stats)
        return eval_metrics(total)


class _Speed:
    """Tokens/s, step time and MFU between two log points, not counting eval and checkpoint time."""

    def __init__(self, config, step: int, num_devices: int):
        spec = config_lib.model_spec(config)
        self.tokens_per_step = config.batch_size * config.data.seq_len
        self.flops_per_step = config.batch_size * flops.train_flops_per_sequence(
            spec, config.data.seq_len, config_lib.max_predictions_per_seq(config))
        peak = flops.peak_tflops(jax.devices()[0].device_kind)
        self.peak_flops = peak * 1e12 * num_devices if peak else None
        self.since, self.since_step, self.paused = time.perf_counter(), step, 0.0

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def measure(self, step: int) -> dict:
        now = time.perf_counter()
        steps = max(step - self.since_step, 1)
        step_time = max(now - self.since - self.paused, 1e-9) / steps
        self.since, self.since_step, self.paused = now, step, 0.0
        out = {"step_time_s": step_time, "tokens_per_s": self.tokens_per_step / step_time}
        if self.peak_flops:
            out["mfu"] = self.flops_per_step / step_time / self.peak_flops
        return out


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, max_steps: int | None = None,
             devices=None, progress: bool = True, handle_sigterm: bool = True) -> dict:
    """Pretrain until config.num_train_steps (or `max_steps`), resuming from the latest checkpoint.

    Returns {step, train: last logged train metrics, eval: last eval metrics}. SIGTERM and orbax's
    multi-host preemption notice save the current step, wait for the save and return.
    """
    from electra_jax.data.reader import Reader, build_tokenizer, open_build, train_dataset

    manifest = open_build(config.data.path, seq_len=config.data.seq_len)
    check_data(config, manifest)
    s = setup(config, devices)
    abstract = s.abstract_state()
    check_workdir(workdir, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract)))
    tc = config.train
    lead = jax.process_index() == 0

    init_rng, train_rng = s.rngs()
    reader = Reader(train_dataset(config.data.path, config.batch_size, config.seed,
                                  shuffle_buffer=config.data.shuffle_buffer), s.batch_sharding)
    checkpoints = Checkpoints(workdir, tc.keep_checkpoints, tc.async_checkpoints)
    meta = {"model": config.model.to_dict(), "data": config.data.path,
            "tokenizer_fingerprint": manifest["tokenizer_fingerprint"], "process_count": jax.process_count()}
    latest = checkpoints.latest_step()
    saved = None if latest is None else checkpoints.meta(latest)
    data_tokenizer = build_tokenizer(config.data.path, manifest)
    if saved is not None:
        check_checkpoint(config, saved, workdir)
        check_tokenizer(config, workdir, saved, latest, data_tokenizer, manifest["tokenizer_fingerprint"])
    # Every check has passed: only now does the workdir change (a refused run leaves it as it was).
    if lead:
        write_config(config, workdir)
        save_workdir_tokenizer(workdir, data_tokenizer, manifest["tokenizer_fingerprint"], saved is not None)
        MetricWriter.drop_after(workdir, latest or 0)  # a rerun replaces what came after its checkpoint
        print(f"resuming from step {latest} (checkpoint {os.path.join(checkpoints.directory, str(latest))})"
              if saved is not None else f"starting from scratch (no checkpoint in {checkpoints.directory})")
        print(f"{jax.process_count()} process(es) x {jax.local_device_count()} {jax.devices()[0].platform} "
              f"device(s); mesh {dict(s.mesh.shape)}")
        if "eval" not in manifest["splits"]:
            print(f"note: {config.data.path} has no eval split, so nothing is evaluated; rebuild with "
                  "`build-data --eval-fraction 0.01` (or more) to watch held-out metrics")
    if saved is None:
        state = s.init(init_rng)
    else:
        if saved.get("process_count", 1) == jax.process_count():
            state = checkpoints.restore(latest, abstract, reader)
        else:  # each host's reader position belongs to another split of the shards
            if lead:
                print(f"{workdir}: step {latest} was saved by {saved['process_count']} processes, this run has "
                      f"{jax.process_count()}: the train state resumes exactly, the data order restarts "
                      "(reseeded with the step)")
            reader = Reader(train_dataset(config.data.path, config.batch_size, config.seed + latest,
                                          shuffle_buffer=config.data.shuffle_buffer), s.batch_sharding)
            state = checkpoints.restore(latest, abstract)
    step = first_step = int(state.step)
    last = min(config.num_train_steps, max_steps or config.num_train_steps)

    evaluate = _Evaluator(s, config) if "eval" in manifest["splits"] and tc.eval_every else None
    writer = MetricWriter(workdir, enabled=lead)
    speed = _Speed(config, step, s.mesh.size)

    def fetch(at: int, metrics) -> dict:
        return check_finite(jax.device_get(metrics), at, checkpoints.latest_step(),
                            config.optim.skip_nonfinite)

    # Train metrics are summed on device over each log interval (one small async op per step) and
    # reported as interval means, so a NaN in any step of the interval is caught too.
    add = jax.jit(lambda total, metrics: jax.tree.map(jnp.add, total, metrics))
    interval = None  # (sums, count) since the last log

    # With several processes JAX's coordination service turns SIGTERM into a step every host agrees on
    # (`reached_preemption`); a handler here would replace that and let hosts stop at different steps.
    stop = StopRequest(enabled=handle_sigterm and jax.process_count() == 1)
    profile_from = step + 3 if tc.profile_steps else -1  # after compilation and warm-up
    bar = Progress(last, enabled=progress and lead)
    pending = None  # (step, (interval sums, count), step metrics), read once the next step is queued
    logged, evaluated = {}, {}
    tracing = False

    def log_pending():
        nonlocal pending, logged
        at, (sums, count), latest = pending
        values = fetch(at, jax.tree.map(lambda x: x / count, sums))
        values.update({k: float(latest[k]) for k in LATEST_VALUE_METRICS if k in latest})
        logged = {**values, **speed.measure(at)}
        writer.write(at, "train", logged)
        bar.update(step, loss=f"{logged['loss']:.3f}", tok_s=f"{logged['tokens_per_s']:,.0f}")
        pending = None

    stop.install()
    try:
        while step < last:
            if step == profile_from:
                host_tf().io.gfile.makedirs(writer.tensorboard_dir)
                jax.profiler.start_trace(writer.tensorboard_dir)
                tracing = True
            dispatched = time.perf_counter()
            state, metrics = s.step(state, next(reader), train_rng)
            if step == first_step:  # this call compiled the step: not a training-speed cost
                speed.pause(time.perf_counter() - dispatched)
            step += 1
            checkpoints.check()  # a save that failed in the background stops the run now
            if tracing and step == profile_from + tc.profile_steps:
                jax.block_until_ready(metrics)
                jax.profiler.stop_trace()
                tracing = False
                bar.write(f"profile of steps {profile_from}-{step - 1} in {writer.tensorboard_dir}")
            interval = (metrics, 1) if interval is None else (add(interval[0], metrics), interval[1] + 1)
            if pending is not None:
                log_pending()
            if step % tc.log_every == 0 or step == last:
                pending, interval = (step, interval, metrics), None
            bar.update(step)
            preempted = stop.requested or checkpoints.reached_preemption(step)
            save = step % tc.save_every == 0 or step == last or preempted
            run_eval = evaluate and (step % tc.eval_every == 0 or step == last)
            if save or run_eval:
                fetch(step, metrics)  # waits for the step; never save or evaluate a non-finite state
                paused = time.perf_counter()
                if save:
                    checkpoints.save(step, state, meta, reader)
                if run_eval:
                    evaluated = evaluate(state.params)
                    writer.write(step, "eval", evaluated)
                    if lead:  # every evaluation is said, also in a log file between progress lines
                        bar.write(f"step {step} eval: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items()))
                speed.pause(time.perf_counter() - paused)
            if preempted:
                bar.write(f"{'stopped by ' + stop.requested if stop.requested else 'preempted'}: saved step "
                          f"{step}; rerun the same command to resume")
                break
        if pending is not None:
            log_pending()
    finally:
        if tracing:
            jax.profiler.stop_trace()
        bar.close()
        checkpoints.close()
        writer.close()
        stop.restore()
    if not evaluated and lead:  # nothing evaluated in this call (a finished run): its last evaluation
        from electra_jax.writers import read_metrics

        evaluated = next((r for r in reversed(read_metrics(workdir)) if r.get("split") == "eval"), {})
        evaluated = {k: v for k, v in evaluated.items() if k not in ("step", "split", "time")}
    return {"step": step, "train": logged, "eval": evaluated}


def restore_params(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int, Any]:
    """(config, step, params as numpy) from a pretrain workdir, on this host's first device."""
    config = config_lib.load_workdir_config(workdir)
    checkpoints = Checkpoints(workdir, async_save=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise TrainingError(f"{workdir}: no checkpoints yet")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise TrainingError(f"{workdir}: no checkpoint at step {step}; there are {steps}")
    config.mesh.update(data=-1, fsdp=1, tensor=1)  # export on whatever this machine has
    state = checkpoints.restore(step, setup(config, jax.devices()[:1], steps=False).abstract_state())
    checkpoints.close()
    return config, step, jax.tree.map(jax.device_get, state.params)


def _mlm_as_discriminator(params: dict) -> dict:
    """The BERT baseline's masked LM (in the generator slot) is the encoder fine-tuning takes."""
    return {"embeddings": params["embeddings"], "discriminator": params["generator"]}


def load_discriminator(source: str) -> tuple[dict, dict, dict, str]:
    """(config.model fields, token ids, discriminator params {embeddings, discriminator}, tokenizer
    path) from an HF ELECTRA discriminator directory or a pretrain WORKDIR[:step] (local or gs://).
    Anything else (a missing path, a generator, a fine-tuning run) is a TrainingError saying what it is."""
    from electra_jax.data.tokenizer import load_tokenizer, special_ids
    from electra_jax.hf import MLM_MARK, from_hf_state_dict, read_pretrained, spec_from_hf_config
    from electra_jax.model import unstack_layers

    workdir, step = split_step(source)
    if not exists(workdir):
        raise TrainingError(f"{workdir}: no such file or directory")
    has_config = exists(os.path.join(workdir, "config.json"))
    saved = json.loads(read_text(os.path.join(workdir, "config.json"))) if has_config else {}
    if "task" in saved:
        raise TrainingError(f"{workdir} is a fine-tuning workdir (task {saved['task'].get('name')!r}), not a "
                            "pretrained discriminator; give the pretrain workdir or its export")
    if exists(os.path.join(workdir, "checkpoints")) or "model" in saved:  # a pretrain workdir
        if not has_config:
            raise TrainingError(f"{workdir}: checkpoints but no config.json; is this a pretrain --workdir?")
        config, step, params = restore_params(workdir, step)
        params = unstack_layers(params)
        vocab = config.model.vocab_size  # without model.vocab_multiple's padding rows: never looked up
        params = {**params, "embeddings": {**params["embeddings"],
                                           "word_embeddings": params["embeddings"]["word_embeddings"][:vocab]}}
        if config.objective.get("name") == "mlm":
            params = _mlm_as_discriminator(params)
        fields = {k: config.model[k] for k in (
            "vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps")}
        tokenizer = workdir_tokenizer(workdir, config, step)
    elif has_config:
        mlm = saved.get(MLM_MARK) == "mlm"  # pretrained with the "mlm" objective: an encoder to fine-tune
        if "ElectraForMaskedLM" in saved.get("architectures", []) and not mlm:
            raise TrainingError(f"{source} is an ELECTRA generator (ElectraForMaskedLM); use the "
                                f"discriminator (an export writes it beside the generator: "
                                f"{os.path.join(os.path.dirname(source.rstrip('/')), 'discriminator')})")
        hf, weights = read_pretrained(source)
        spec = spec_from_hf_config(hf)
        params = from_hf_state_dict(weights, spec, "generator" if mlm else "discriminator")
        if mlm:
            params = _mlm_as_discriminator(params)
        fields = {"vocab_size": spec.vocab_size, "embedding_size": spec.embedding_size,
                  "hidden_size": hf["hidden_size"], "num_layers": hf["num_hidden_layers"],
                  "num_heads": hf["num_attention_heads"], "intermediate_size": hf["intermediate_size"],
                  "max_position_embeddings": spec.max_position_embeddings,
                  "type_vocab_size": spec.type_vocab_size, "layer_norm_eps": spec.layer_norm_eps}
        tokenizer = os.path.join(source, "tokenizer.json") if is_remote(source) else source
    else:
        raise TrainingError(f"{source}: neither a Hugging Face ELECTRA discriminator directory "
                            "(config.json + model.safetensors) nor a pretrain WORKDIR[:step]")
    ids = special_ids(load_tokenizer(tokenizer), tokenizer)
    tokens = {"pad_id": ids.pad, "cls_id": ids.cls, "sep_id": ids.sep, "mask_id": ids.mask}
    return fields, tokens, params, tokenizer


def import_hf(discriminator_dir: str, generator_dir: str, workdir: str, config: ml_collections.ConfigDict,
              devices=None) -> tuple[ml_collections.ConfigDict, list[str]]:
    """Published-layout HF discriminator + generator -> a step-0 checkpoint in `workdir` that pretraining
    continues from. Model fields come from the HF configs (checked against each other); the rest of
    `config` (optimizer, data, ...) is kept. Returns the config and the model overrides it needed."""
    import numpy as np

    from electra_jax.data.tokenizer import TokenizerError, fingerprint, load_tokenizer, special_ids
    from electra_jax.hf import from_hf_state_dict, model_fields_from_hf, read_pretrained
    from electra_jax.model import stack_layers, unstack_layers

    requested = config_lib.model_spec(config)
    if requested.objective != "electra" or requested.uniform_generator:
        raise TrainingError("import writes an ELECTRA pair (a learned generator and a discriminator); the "
                            "config asks for objective.name=mlm or objective.uniform_generator: drop that")
    disc_config, disc_weights = read_pretrained(discriminator_dir)
    gen_config, gen_weights = read_pretrained(generator_dir)
    fields = model_fields_from_hf(disc_config, gen_config)
    overrides = [f"--config.model.{k}={v}" for k, v in fields.items() if config.model[k] != v]
    config.model.update(fields)
    positions = config.model.max_position_embeddings
    if config.data.seq_len > positions:  # e.g. a small published pair under the default Base preset
        print(f"note: data.seq_len {config.data.seq_len} -> {positions}, the pair's position table")
        config.data.seq_len = positions
        overrides.append(f"--config.data.seq_len={positions}")
    try:
        tokenizer = load_tokenizer(discriminator_dir)
    except TokenizerError:
        tokenizer = None  # no tokenizer files beside the weights: the config's special ids stand
        print(f"note: {discriminator_dir} has no tokenizer files; export and finetune will need "
              f"{os.path.join(workdir, TOKENIZER_FILE)}")
    if tokenizer is not None:
        ids = special_ids(tokenizer, discriminator_dir)
        tokens = {"pad_id": ids.pad, "cls_id": ids.cls, "sep_id": ids.sep, "mask_id": ids.mask}
        overrides += [f"--config.tokens.{k}={v}" for k, v in tokens.items() if config.tokens[k] != v]
        config.tokens.update(tokens)

    s = setup(config, devices, steps=False)
    abstract = s.abstract_state()
    check_workdir(workdir, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract)))
    checkpoints = Checkpoints(workdir, async_save=False)
    if checkpoints.latest_step() is not None:
        raise TrainingError(f"{workdir} already holds checkpoints {checkpoints.all_steps()}; import into "
                            "an empty --workdir")
    expected = jax.eval_shape(unstack_layers, abstract.params)
    spec = config_lib.model_spec(config)
    params = from_hf_state_dict(disc_weights, spec, "discriminator", expected)
    generator = from_hf_state_dict(gen_weights, spec, "generator", expected)
    params["generator"] = generator["generator"]
    shared = params["embeddings"]
    if not all(np.array_equal(shared[k], generator["embeddings"][k]) for k in shared if k != "layer_norm"):
        print("note: the generator's embedding tables differ from the discriminator's; the "
              "discriminator's are kept (ELECTRA shares them)")
    state = s.state_from_params(stack_layers(params) if config.model.scan_layers else params)
    write_config(config, workdir)
    if tokenizer is not None:  # the pair's tokenizer stays with the model (export, finetune, detect)
        write_text_atomic(os.path.join(workdir, TOKENIZER_FILE), tokenizer.to_str())
    meta = {"model": config.model.to_dict(), "data": None,
            "tokenizer_fingerprint": fingerprint(tokenizer) if tokenizer is not None else None,
            "imported_from": {"discriminator": discriminator_dir, "generator": generator_dir}}
    checkpoints.save(0, state, meta)
    checkpoints.close()
    return config, overrides
