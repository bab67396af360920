"""`electra-jax finetune`: a pretrained discriminator + a task -> fine-tuned classifiers, one per seed,
the best epoch of each kept by the task's metric, and results.json with each seed and the median.

Same machinery as pretraining: the Flax encoder (`model.Classifier` reuses the discriminator's modules
and parameter names), `train.build` (sharded jit, donated state), optax chains from `optim`, orbax
`Checkpoints` and the `MetricWriter`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from electra_jax import config as config_lib
from electra_jax.checkpoint import Checkpoints
from electra_jax.fs import exists, host_tf, read_text, write_text_atomic
from electra_jax.finetune import metrics as metrics_lib
from electra_jax.finetune import outputs as outputs_lib
from electra_jax.finetune import qa
from electra_jax.finetune.tasks import (TaskError, TaskSpec, encode, label_names, read_conll,
                                        read_table, read_tfds, task_spec, with_swapped_pairs)
from electra_jax.model import Classifier, SpanExtractor, answer_mask
from electra_jax.optim import make_optimizer
from electra_jax.pretrain import (TrainingError, check_finite, check_workdir, load_discriminator,
                                  write_config)
from electra_jax.sharding import replicated, with_activation_layout
from electra_jax.signals import StopRequest
from electra_jax.train import Setup, build
from electra_jax.writers import MetricWriter, Progress


# ----------------------------------------------------------------------------- the pure core


def classifier_loss(params, batch: dict, rng: jax.Array, *, model: Classifier, kind: str,
                    deterministic: bool = False, reduction: str = "sum"):
    """Weighted CE (classification, tagging) or MSE (regression) and {name: [num, den]} metrics.

    `weights` [B] marks real rows (padding rows of the last batch weigh 0); tagging multiplies in
    `label_weights` [B, S] (the first sub-token of each word). `reduction="sum"` is the original's
    (run_finetuning.py reduce_sums the per-example losses; gradients are then clipped to norm 1);
    `"mean"` divides by the weight.
    """
    logits = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                         deterministic, rngs=None if deterministic else {"dropout": rng})
    w = batch["weights"].astype(jnp.float32)
    if kind == "regression":
        per = jnp.square(logits[..., 0] - batch["labels"])
        correct = jnp.zeros_like(per)
    else:
        if kind == "tagging":
            w = w[:, None] * batch["label_weights"]
        per = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    total = jnp.sum(w)
    loss = jnp.sum(w * per) if reduction == "sum" else jnp.sum(w * per) / jnp.maximum(total, 1e-6)
    return loss, {"loss": jnp.stack([jnp.sum(w * per), total]),
                  "accuracy": jnp.stack([jnp.sum(w * correct), total])}


def span_loss(params, batch: dict, rng: jax.Array, *, model: SpanExtractor, no_answer_weight: float = 0.5,
              deterministic: bool = False, reduction: str = "sum"):
    """QA loss of the original (qa_tasks.py): (CE(start) + CE(end)) / 2 over the context and [CLS]
    (elsewhere -1000), plus `no_answer_weight` x sigmoid CE of the no-answer logit (SQuAD 2.0), per
    example; weighted and reduced as `classifier_loss`."""
    out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                      deterministic, batch["start_positions"] if model.head == "paper" else None,
                      rngs=None if deterministic else {"dropout": rng})
    off_context = 1000.0 * (answer_mask(batch["segment_ids"], batch["input_mask"]) - 1.0)
    start_logits, end_logits = out["start_logits"], out["end_logits"]
    if model.head == "hf":  # the paper head masks inside; HF's head is left as HF computes it
        start_logits, end_logits = start_logits + off_context, end_logits + off_context
    ce = optax.softmax_cross_entropy_with_integer_labels
    per = (ce(start_logits, batch["start_positions"]) + ce(end_logits, batch["end_positions"])) / 2
    if "no_answer_logit" in out:
        per += no_answer_weight * optax.sigmoid_binary_cross_entropy(out["no_answer_logit"], batch["is_impossible"])
    w = batch["weights"].astype(jnp.float32)
    total = jnp.sum(w)
    loss = jnp.sum(w * per) if reduction == "sum" else jnp.sum(w * per) / jnp.maximum(total, 1e-6)
    correct = (jnp.argmax(start_logits, -1) == batch["start_positions"]).astype(jnp.float32)
    return loss, {"loss": jnp.stack([jnp.sum(w * per), total]),
                  "start_accuracy": jnp.stack([jnp.sum(w * correct), total])}


def layer_depths(params, num_layers: int, convention: str) -> Any:
    """Depth of every parameter for layer-wise LR decay: 0 embeddings (and their projection), i+1 for
    layer_i, and the head on top. `original` puts the head at L+2, as `_get_layer_lrs` (the top layer
    then gets d^2, an off-by-one left from a removed pooler); `consecutive` at L+1. In the scanned
    layout (`model.scan_layers`) a `layers` leaf stacks the layers on its first axis, so its depth is
    an array 1..L shaped to broadcast along that axis."""
    top = num_layers + 2 if convention == "original" else num_layers + 1

    def depth(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0] == "head":
            return top
        if "layers" in names:
            return np.arange(1, num_layers + 1).reshape((num_layers,) + (1,) * (len(leaf.shape) - 1))
        layer = next((n for n in names if re.fullmatch(r"layer_\d+", n)), None)
        return int(layer[len("layer_"):]) + 1 if layer else 0

    return jax.tree_util.tree_map_with_path(depth, params), top


# ----------------------------------------------------------------------------- sources


def load_init(init: str) -> tuple[dict, dict, dict, str]:
    """(config.model fields, token ids, backbone {embeddings, discriminator: {encoder}}, tokenizer path)
    from an HF discriminator directory or a pretrain WORKDIR[:step]."""
    fields, tokens, params, tokenizer = load_discriminator(init)
    backbone = {"embeddings": params["embeddings"],
                "discriminator": {"encoder": params["discriminator"]["encoder"]}}
    return fields, tokens, backbone, tokenizer


def load_task(config: ml_collections.ConfigDict):
    """(spec, training split, {eval split: data}): `Examples`, or `qa.QAData` for question answering."""
    t = config.task
    spec = task_spec(t.name, t.text_a, t.text_b, t.label)
    data_dir = t.tfds_data_dir or None
    if spec.kind == "qa":
        if spec.tfds:
            read = functools.partial(qa.read_squad_tfds, spec.tfds, data_dir=data_dir, download=t.download)
            return spec, read(split="train"), {"dev": read(split="validation")}
        _need_files(t)
        return spec, qa.read_squad(t.train), {"dev": qa.read_squad(t.dev)}
    if spec.tfds:
        train = read_tfds(spec, spec.train_split, data_dir, t.download)
        evals = {split: read_tfds(spec, split, data_dir, t.download) for split in spec.eval_splits}
    else:
        _need_files(t)
        read = read_conll if spec.kind == "tagging" else functools.partial(read_table, spec=spec, skip_bad_rows=t.skip_bad_rows)
        train, evals = read(t.train), {"dev": read(t.dev)}
    for examples in (train, *evals.values()):
        if not examples.text_a:
            raise TaskError(f"{examples.source}: the split is empty")
    if spec.symmetric and t.double_unordered:
        train = with_swapped_pairs(train)
    return spec, train, evals


def _need_files(t) -> None:
    if not t.train or not t.dev:
        raise TaskError(f"task {t.name!r} reads local files: pass --train FILE and --dev FILE")


def trim_padding(data: dict[str, np.ndarray], multiple: int = 8) -> dict[str, np.ndarray]:
    """Rows [N, S] cut to the longest real row (rounded up to `multiple`): short texts padded to
    task.max_len would cost the full length in every step for nothing (the padding is masked out)."""
    length = data["input_ids"].shape[1]
    keep = min(length, -(-int(data["input_mask"].sum(1).max()) // multiple) * multiple)
    return {k: v[:, :keep] if v.ndim >= 2 and v.shape[1] == length else v for k, v in data.items()}


def encode_task(config, spec: TaskSpec, train_examples, eval_examples: dict, tokenizer, log=print,
                labels: list[str] | None = None, labelled: bool = True):
    """(training arrays, {split: (model inputs, evaluate)}, class names, QA's no-answer head?).
    `evaluate(outputs)` -> ({metric: value}, {file name: text}): the split's scores (none when it is
    not `labelled`) and its predictions files (`outputs.py`). `labels`: the classes of a trained model
    (default: the training split's)."""
    t, pad_id = config.task, config.tokens.pad_id
    if spec.kind != "qa":
        labels = label_names(train_examples, spec) if labels is None else labels
        encode_split = lambda examples: trim_padding(encode(examples, spec, tokenizer, t.max_len, labels, pad_id))

        def evaluate(examples, data, outputs):
            rows = outputs_lib.rows(spec, examples, labels, outputs, data, labelled)
            scores = score(spec, outputs, data, labels) if labelled else {}
            return scores, {"predictions.jsonl": outputs_lib.serialize(rows, "jsonl")}

        evals = {}
        for split, examples in eval_examples.items():
            data = encode_split(examples)
            evals[split] = (data, functools.partial(evaluate, examples, data))
        return encode_split(train_examples) if train_examples is not None else None, evals, labels, False

    if not 1 <= t.max_query_len <= t.max_len - 4:
        raise TaskError(f"task.max_query_len {t.max_query_len}: must be between 1 and task.max_len - 4 "
                        f"({t.max_len - 4}), to leave room for the context")
    if train_examples is None:  # a trained model's predictions: as it was trained
        unanswerable = bool(t.unanswerable)
    else:
        unanswerable = spec.unanswerable if spec.unanswerable is not None else train_examples.has_unanswerable
    # The model's no-answer head: on every task as the original (trained on 1.1 with label 0), or only
    # where there are unanswerable questions. Scoring uses it only where there are.
    answerable = unanswerable or bool(t.answerable_classifier)
    windows = functools.partial(qa.featurize, tokenizer=tokenizer, max_len=t.max_len,
                                max_query_len=t.max_query_len, doc_stride=t.doc_stride, pad_id=pad_id)
    splits = {"train": train_examples, **eval_examples} if train_examples is not None else dict(eval_examples)
    features = {split: windows(data, training=split == "train") for split, data in splits.items()}
    for split, data in splits.items():  # what could not be used, counted and shown, never silent
        log_qa_problems(data, features[split].counts, t.max_query_len, split == "train", log)

    def scorer(data, feats, outputs):
        predictions, no_answer = qa.decode(outputs, feats, data, t.n_best, t.max_answer_len)
        files = outputs_lib.squad_files(predictions, no_answer, t.qa_na_threshold, unanswerable)
        if not labelled:
            return {}, files
        gold = {q.qid: list(q.answers) if not q.is_impossible else [] for q in data.questions}
        return metrics_lib.squad_scores(gold, predictions, no_answer if unanswerable else None,
                                        threshold=t.qa_na_threshold), files

    evals = {split: (features[split].arrays, functools.partial(scorer, data, features[split]))
             for split, data in eval_examples.items()}
    return features["train"].arrays if train_examples is not None else None, evals, [], answerable


def log_qa_problems(data, counts: dict[str, int], max_query_len: int, training: bool, log=print) -> None:
    """One line per split saying what in it could not be used as written, and what happens to each kind."""
    problems = []
    if counts.get("truncated_questions"):
        problems.append(f"{counts['truncated_questions']} questions longer than task.max_query_len "
                        f"{max_query_len} tokens (cut to it, as the original; "
                        + ("trained on)" if training else "scored)"))
    if counts.get("unaligned_answers"):  # only counted in training
        problems.append(f"{counts['unaligned_answers']} answers that cover no context sub-token (not trained on)")
    if data.misaligned:
        problems.append(f"{len(data.misaligned)} answers whose answer_start does not match the context ("
                        + ("not trained on" if training else "scored by their text")
                        + f"; e.g. {'; '.join(data.misaligned[:3])})")
    if problems:
        log(f"{data.source}: " + ", ".join(problems))


# ----------------------------------------------------------------------------- setup and loop


def classifier_setup(config: ml_collections.ConfigDict, num_outputs: int, kind: str, devices=None,
                     answerable: bool = False) -> Setup:
    """The sharded model, step and optimizer of a task: a `Classifier` (num_outputs classes, 1 for
    regression) or, for kind "qa", a `SpanExtractor` (with a no-answer logit when `answerable`)."""
    devices = list(devices if devices is not None else jax.devices())
    config_lib.validate(config, num_devices=len(devices))
    if config.head not in config_lib.HEADS:
        raise TaskError(f"head {config.head!r}: set it (one of {config_lib.HEADS}) or let `finetune` choose the task's")
    spec = config_lib.model_spec(config, devices[0].platform)
    max_len = config.task.max_len
    if kind == "qa":
        model = SpanExtractor(spec, config.head, config.task.beam, answerable)
        loss_fn = functools.partial(span_loss, model=model, no_answer_weight=config.task.no_answer_weight,
                                    reduction=config.loss_reduction)
    else:
        model = Classifier(spec, num_outputs, "tokens" if kind == "tagging" else config.pooling, config.head)
        loss_fn = functools.partial(classifier_loss, model=model, kind=kind, reduction=config.loss_reduction)

    def init_fn(rng):
        ids = jnp.zeros((1, max_len), jnp.int32)
        return model.init({"params": rng}, ids, ids, jnp.ones_like(ids))["params"]

    def grad_fn(params, batch, rng, constrain=None):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        return grads, metrics

    depth_fn = None
    if config.optim.layerwise_lr_decay < 1.0:
        depth_fn = lambda params: layer_depths(params, spec.discriminator.num_layers,
                                               config.optim.layerwise_depth)
    tx, schedule = make_optimizer(config, depth_fn)
    return build(config, devices, model, init_fn, grad_fn, tx, schedule)


def _batches(data: dict, batch_size: int, order: np.ndarray):
    """Global batches in `order`; the last is padded with weight-0 rows so every example counts once."""
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        pad = batch_size - len(rows)
        batch = {k: np.concatenate([v[rows], np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in data.items()}
        batch["weights"] = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
        yield batch


def _put(batch: dict, sharding) -> dict:
    """This host's rows of a global batch -> global arrays laid out as `sharding`."""
    n, i = jax.process_count(), jax.process_index()
    return {k: jax.make_array_from_process_local_data(sharding, np.array_split(v, n)[i])
            for k, v in batch.items()}


def score(spec: TaskSpec, outputs: np.ndarray, data: dict, labels: list[str]) -> dict:
    """The task's metrics from model outputs on a whole split (host numpy)."""
    if spec.kind == "regression":
        pred, gold = outputs[..., 0], data["labels"]
        return {"spearman": metrics_lib.spearman(pred, gold), "pearson": metrics_lib.pearson(pred, gold)}
    pred = outputs.argmax(-1)
    if spec.kind == "tagging":
        keep = data["label_weights"] > 0
        seqs = [([labels[t] for t in p[k]], [labels[t] for t in g[k]])
                for p, g, k in zip(pred, data["labels"], keep)]
        return {"entity_f1": metrics_lib.entity_f1([p for p, _ in seqs], [g for _, g in seqs]),
                "accuracy": metrics_lib.accuracy(pred[keep], data["labels"][keep])}
    gold = data["labels"]
    out = {"accuracy": metrics_lib.accuracy(pred, gold)}
    if len(labels) == 2:
        out.update(f1=metrics_lib.binary_f1(pred, gold), mcc=metrics_lib.matthews_corrcoef(pred, gold))
    return out


def make_predictor(s: Setup, dtype: str = ""):
    """The jitted model on a batch, without dropout, computing in `dtype` ("": the training dtype)."""
    model = s.model.clone(spec=dataclasses.replace(s.model.spec, dtype=dtype)) if dtype else s.model
    return jax.jit(with_activation_layout(lambda params, batch: model.apply(
        {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"], True), s.mesh),
        in_shardings=(s.state_shardings.params, s.batch_sharding), out_shardings=replicated(s.mesh))


def predict(s: Setup, params, data: dict, batch_size: int, predictor=None):
    """The model's outputs (an array, or a dict of arrays for QA) on every row of `data`, in order."""
    predictor = predictor or make_predictor(s)
    n = len(data["input_ids"])
    outs = [jax.device_get(predictor(params, _put(b, s.batch_sharding)))
            for b in _batches(data, batch_size, np.arange(n))]
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *outs)


def _fingerprint(arrays) -> str:
    """A short hash of a tree of arrays (names, shapes, dtypes and bytes): what a rerun must find again."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
        leaf = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)} {leaf.dtype} {leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


RESULT_FILE = "result.json"  # in a seed's directory once it has finished: its epochs and kept checkpoint


def run_seed(config, spec: TaskSpec, train: dict, evals: dict[str, tuple[dict, Any]], labels: list[str],
             backbone: dict | None, workdir: str, devices=None, progress: bool = True,
             answerable: bool = False, stop: StopRequest | None = None) -> dict | None:
    """Fine-tune one seed and keep one checkpoint: the final epoch's (the original's, the default) or,
    with model_selection="best", the epoch with the best dev score. `evals`: split -> (model inputs,
    a function of the model's outputs on them -> {metric: value}). Returns the kept epoch's metrics
    ("selected"), the final and the best epoch's, and every epoch's; None when `stop` was requested
    (the step is saved). A rerun continues where the last one stopped, or reads a finished seed's result."""
    lead = jax.process_index() == 0
    log = print if lead else (lambda _: None)
    done_path = os.path.join(workdir, RESULT_FILE)
    if exists(done_path):
        log(f"seed {config.seed}: finished earlier ({done_path})")
        return json.loads(read_text(done_path))
    num_outputs = 1 if spec.kind == "regression" else len(labels)
    s = classifier_setup(config, num_outputs, spec.kind, devices, answerable)
    main_split, main_metric = next(iter(evals)), spec.metrics[0]
    main = f"{main_split}/{main_metric}"
    select_best = config.model_selection == "best"
    checkpoints = Checkpoints(workdir, keep=1, async_save=False,
                              best=(lambda m: m[main]) if select_best else None)
    # The latest state when the kept checkpoint is not it: mid-epoch on SIGTERM / Ctrl-C, and at epoch
    # ends when the kept one is the best epoch's.
    resume = Checkpoints(os.path.join(workdir, "resume"), keep=1, async_save=False)
    init_rng, train_rng = s.rngs()
    saved = max(((c.latest_step(), c) for c in (checkpoints, resume) if c.latest_step() is not None),
                key=lambda x: x[0], default=None)
    if saved is None:
        state = s.init(init_rng)
        if backbone is not None:
            state = s.state_from_params({**state.params, **backbone})
        history = []
    else:
        at, source = saved
        state = source.restore(at, s.abstract_state())
        history = source.meta(at)["history"]
        log(f"seed {config.seed}: resuming from step {at} ({os.path.join(source.directory, str(at))})")
    if lead:
        MetricWriter.drop_after(workdir, saved[0] if saved else 0)  # each step logged once
    writer = MetricWriter(workdir, enabled=lead)
    predictor = make_predictor(s, config.get("eval_dtype", ""))
    n, bs = len(train["input_ids"]), config.batch_size
    epochs = config.num_epochs or spec.epochs
    per_epoch = math.ceil(n / bs)
    total = epochs * per_epoch
    step = saved_at = int(state.step)
    save_gap = max(per_epoch, total // 10)
    meta = lambda: {"task": spec.name, "labels": labels, "history": history}
    bar = Progress(total, enabled=progress and lead, every_s=0)
    say = bar.write if bar.enabled else log  # beside the bar, or a plain line
    stop = stop or StopRequest(enabled=False)
    try:
        while step < total:
            epoch, done = divmod(step, per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            for batch in _batches(train, bs, order[done * bs:]):  # a resumed epoch skips its done batches
                state, metrics = s.step(state, _put(batch, s.batch_sharding), train_rng)
                step += 1
                bar.update(step)  # a host counter: reading state.step would wait for the device
                if (stop.requested or checkpoints.reached_preemption(step)) and step % per_epoch:
                    break
            values = check_finite(jax.device_get(metrics), step, checkpoints.latest_step(),
                                  config.optim.skip_nonfinite)
            if step % per_epoch:  # stopped inside an epoch
                resume.save(step, state, meta())
                say(f"{'stopped by ' + (stop.requested or 'preemption')}: saved seed {config.seed} at step "
                    f"{step} of {total}; rerun the same command to resume")
                return None
            writer.write(step, "train", values)
            epoch += 1
            result = None
            if config.eval_every_epoch or epoch == epochs:
                result = {"epoch": epoch, "step": step}
                files = {}
                for split, (data, evaluate) in evals.items():
                    scores, files[split] = evaluate(predict(s, state.params, data, bs, predictor))
                    result.update({f"{split}/{k}": v for k, v in scores.items()})
                # The kept epoch's predictions beside its scores: the final epoch's, or the best so far.
                if lead and (not select_best or all(result[main] > r[main] for r in history)):
                    for split, named in files.items():
                        for name, text in named.items():
                            write_text_atomic(os.path.join(workdir, f"{split}_{name}"), text)
                writer.write(step, "eval", {k: v for k, v in result.items() if "/" in k})
                bar.update(step, epoch=str(epoch), **{k.split("/")[-1]: f"{v:.3f}" for k, v in result.items()
                                                      if k.startswith(main_split)})
                history.append(result)
            stopping = (stop.requested or checkpoints.reached_preemption(step)) and step < total
            # Saved at the end, when stopping, and every tenth of the run (every epoch when epochs are
            # longer): many short epochs of a small set are not each worth a checkpoint.
            if epoch == epochs or stopping or step - saved_at >= save_gap:
                if select_best:  # the kept checkpoint is the best epoch's, the latest state goes beside it
                    if epoch < epochs:
                        resume.save(step, state, meta())
                else:
                    checkpoints.save(step, state, meta(), metrics=result)
                saved_at = step
            if select_best and result is not None:
                checkpoints.save(step, state, meta(), metrics=result)
            if stopping:
                say(f"{'stopped by ' + (stop.requested or 'preemption')}: saved seed {config.seed} after "
                    f"epoch {epoch} (step {step}); rerun the same command to resume")
                return None
        kept = checkpoints.best_step() if select_best else checkpoints.latest_step()  # what export restores
    finally:
        bar.close()
        checkpoints.close()
        resume.close()
        writer.close()
    seeded = lambda r: {"seed": config.seed, **r}
    out = {"selected": seeded(next(r for r in history if r["step"] == kept)), "final": seeded(history[-1]),
           "best": seeded(max(history, key=lambda r: r[main])), "history": history}
    if lead:
        write_text_atomic(done_path, json.dumps(out, indent=2))
        host_tf().io.gfile.rmtree(resume.workdir)
    return out


def check_rerun(config, workdir: str) -> bool:
    """True when `workdir` holds this same fine-tuning run (settings, data and init weights, compared by
    fingerprint), which then resumes; False when it holds none; TaskError when it holds another."""
    path = os.path.join(workdir, "config.json")
    if not exists(path):
        return False
    saved = json.loads(read_text(path))
    if "task" not in saved:
        raise TaskError(f"{workdir} is a pretraining workdir; give finetune its own --workdir")
    now = json.loads(config.to_json_best_effort())

    def differences(a, b, prefix=""):
        for key in sorted(a):  # a field added since the run was made is not a difference
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                yield from differences(x, y, f"{prefix}{key}.")
            elif x != y and f"{prefix}{key}" not in RERUN_MAY_CHANGE:
                yield f"{prefix}{key}: {x!r} there, {y!r} now"

    differ = list(differences(saved, now))
    if differ:
        raise TaskError(f"{workdir} holds a fine-tuning run with other settings or data ({'; '.join(differ[:4])}"
                        f"{'; ...' if len(differ) > 4 else ''}); rerun its own command to resume it, use another "
                        f"--workdir, or delete {workdir} to start fresh")
    return True


# Fields a rerun may change without changing the run.
RERUN_MAY_CHANGE = ("task.download", "task.tfds_data_dir", "write_test")


def finetune(config: ml_collections.ConfigDict, init: str, workdir: str, *, seeds: int = 1,
             random_init: bool = False, devices=None, progress: bool = True, stop: StopRequest | None = None) -> dict:
    """Fine-tune `seeds` runs from `init` (its weights, or only its shape with `random_init`) and write
    WORKDIR/results.json: every seed's kept epoch and the median of each metric over seeds.

    A rerun into the same workdir (same settings, data and init, by fingerprint) reads finished seeds
    back and resumes an interrupted one at its step; another run there is refused. SIGTERM or Ctrl-C
    (`stop`) saves the current step and returns {"interrupted": True, "seed": ...}."""
    from electra_jax.data.tokenizer import load_tokenizer

    lead = jax.process_index() == 0
    log = print if lead else (lambda _: None)
    t = config.task
    spec = task_spec(t.name, t.text_a, t.text_b, t.label)
    file_task = spec.tfds is None
    if not config.head:  # tagging: the paper's head (dropout -> dense per token) is HF's token classifier
        config.head = "hf" if file_task and spec.kind != "tagging" else "paper"
    if spec.kind == "tagging" and config.head != "paper":
        raise TaskError("tagging takes head 'paper' (dropout -> dense on each token, what "
                        "ElectraForTokenClassification is); head 'hf' would add a layer no Hugging Face class has")
    fields, tokens, backbone, tokenizer_path = load_init(init)
    config.model.update(fields)
    config.tokens.update(tokens)
    config_lib.validate(config)  # before anything is read or written
    spec, train_examples, eval_examples = load_task(config)
    positions = config.model.max_position_embeddings
    if not config.task.max_len:
        config.task.max_len = min(spec.max_len, positions)
    if not 4 <= config.task.max_len <= positions:
        raise TaskError(f"task.max_len {config.task.max_len}: must be at least 4 ([CLS] A [SEP] B [SEP]) and "
                        f"at most the model's {positions} positions")
    train, evals, labels, answerable = encode_task(config, spec, train_examples, eval_examples,
                                                   load_tokenizer(tokenizer_path), log=log)
    per_epoch = math.ceil(len(train["input_ids"]) / config.batch_size)
    epochs = config.num_epochs or spec.epochs
    if not config.num_epochs and file_task and epochs * per_epoch < config.min_steps:
        epochs = math.ceil(config.min_steps / per_epoch)
        log(f"{len(train['input_ids']):,} training examples make {per_epoch} steps per epoch: training "
            f"{epochs} epochs ({epochs * per_epoch} steps, config.min_steps {config.min_steps}); "
            "--config.num_epochs=N sets the epochs")
    config.num_epochs = epochs
    config.num_train_steps = epochs * per_epoch
    config.optim.warmup_steps = int(config.optim.warmup_fraction * config.num_train_steps)
    config.task.init = init
    config.task.tokenizer = tokenizer_path
    config.task.labels = labels
    config.task.random_init = random_init
    config.task.answerable = answerable
    config.task.unanswerable = spec.kind == "qa" and (spec.unanswerable if spec.unanswerable is not None
                                                      else train_examples.has_unanswerable)
    config.task.data_fingerprint = _fingerprint({"train": train, **{k: v[0] for k, v in evals.items()}})
    config.task.init_fingerprint = _fingerprint(backbone)
    check_workdir(workdir, 0)
    if check_rerun(config, workdir) and jax.process_index() == 0:
        print(f"{workdir} holds this run: finished seeds are read back, an interrupted one resumes")
    if jax.process_index() == 0:
        write_config(config, workdir)

    runs = []
    with stop or StopRequest(enabled=jax.process_count() == 1) as stop:
        for k in range(seeds):
            seed_config = config.copy_and_resolve_references()
            seed_config.seed = config.seed + k
            run = run_seed(seed_config, spec, train, evals, labels, None if random_init else backbone,
                           os.path.join(workdir, f"seed_{seed_config.seed}"), devices, progress, answerable, stop)
            if run is None:
                return {"interrupted": True, "seed": seed_config.seed}
            runs.append(run)
    names = [k for k in runs[0]["selected"] if "/" in k]  # split/metric
    median = lambda which: {k: float(np.median([r[which][k] for r in runs])) for k in names}
    results = {"task": spec.name, "init": init, "random_init": random_init, "seeds": seeds,
               "epochs": epochs, "train_examples": len(train["input_ids"]),
               # "final": the last epoch, as the paper reports; "best": chosen on the dev set, optimistic
               "model_selection": config.model_selection,
               "runs": [r["selected"] for r in runs], "median": median("selected"),
               "median_final_epoch": median("final"), "median_best_dev_epoch": median("best"),
               "history": [r["history"] for r in runs]}
    if any(k.endswith("/best_f1") for k in names):  # SQuAD 2.0-style scoring: what the headline numbers mean
        results["qa_na_threshold"] = config.task.qa_na_threshold
    if jax.process_index() == 0:
        write_text_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    return results


# An export's config.json keeps what reading data as fine-tuning did needs (`predict` on an export).
EXPORT_TASK_KEY = "electra_jax_task"
EXPORT_TASK_FIELDS = ("name", "text_a", "text_b", "label", "labels", "max_len", "max_query_len", "doc_stride",
                      "max_answer_len", "n_best", "beam", "qa_na_threshold", "answerable", "unanswerable")


def restore_finetuned(workdir: str, seed: int | None = None):
    """(config, task spec, the run's results entry, params as numpy) of a finished fine-tuning workdir:
    the kept checkpoint of its best seed by the task's main metric, or of `seed`."""
    config = config_lib.load_workdir_config(workdir)
    if "task" not in config or not config.task.name:
        raise TrainingError(f"{workdir} is not a fine-tuning workdir (no task in its config.json)")
    results_path = os.path.join(workdir, "results.json")
    if not host_tf().io.gfile.exists(results_path):
        raise TrainingError(f"{workdir}: no results.json; has the fine-tuning run finished?")
    with host_tf().io.gfile.GFile(results_path) as f:
        results = json.load(f)
    spec = task_spec(config.task.name, config.task.text_a, config.task.text_b, config.task.label)
    main = [k for k in results["runs"][0] if k.endswith("/" + spec.metrics[0])][0]
    runs = {r["seed"]: r for r in results["runs"]}
    if seed is not None and seed not in runs:
        raise TrainingError(f"{workdir}: no run with seed {seed}; there are {sorted(runs)}")
    run = runs[seed] if seed is not None else max(results["runs"], key=lambda r: r[main])
    num_outputs = {"regression": 1, "qa": 2}.get(spec.kind, len(config.task.labels))
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    s = classifier_setup(config, num_outputs, spec.kind, jax.devices()[:1], config.task.answerable)
    checkpoints = Checkpoints(os.path.join(workdir, f"seed_{run['seed']}"), async_save=False)
    state = checkpoints.restore(run["step"], s.abstract_state())
    checkpoints.close()
    return config, spec, run, jax.tree.map(np.asarray, jax.device_get(state.params))


def export_finetuned(workdir: str, out: str, seed: int | None = None, dtype=np.float32) -> str:
    """The kept epoch of a fine-tuning run (of its best seed, or `seed`) -> one HF directory that
    ElectraForSequenceClassification / TokenClassification (with id2label) / QuestionAnswering loads."""
    from electra_jax.hf import ARCHITECTURES, export_model

    config, spec, run, params = restore_finetuned(workdir, seed)
    if spec.kind == "tagging":
        kind = "token_classifier"
    elif spec.kind != "qa" and config.pooling != "cls":
        raise TrainingError(f"pooling {config.pooling!r} has no Hugging Face class (ElectraForSequenceClassification "
                            "reads [CLS]); fine-tune with --config.pooling=cls --config.head=hf to export")
    elif config.head != "hf":
        raise TrainingError(f"the paper head ({'the joint span head' if spec.kind == 'qa' else '[CLS] -> dense'}) "
                            "has no exact Hugging Face class; fine-tune with --config.head=hf to export")
    else:
        kind = "question_answerer" if spec.kind == "qa" else "sequence_classifier"
    labels = list(config.task.labels)
    num_outputs = {"regression": 1, "qa": 2}.get(spec.kind, len(labels))
    extra = {"architectures": [ARCHITECTURES[kind]], "num_labels": num_outputs,
             EXPORT_TASK_KEY: {**{k: config.task[k] for k in EXPORT_TASK_FIELDS},
                               "batch_size": config.batch_size, "eval_dtype": config.get("eval_dtype", "")}}
    if spec.kind != "qa":
        extra["problem_type"] = "regression" if spec.kind == "regression" else "single_label_classification"
    if labels:
        extra.update(id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    scores = {k: v for k, v in run.items() if "/" in k}
    card = (f"Fine-tuned with electra-jax on {spec.name} from `{config.task.init}` (seed {run['seed']}, "
            f"epoch {run['epoch']}, step {run['step']}).\n\nScores: {json.dumps(scores)}")
    return export_model(params, config_lib.model_spec(config), kind, out, config.task.tokenizer, card, dtype,
                        config.tokens.pad_id, extra)
