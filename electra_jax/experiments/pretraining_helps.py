"""Does pretraining with electra-jax make a better encoder? Random initialisation against the BERT
(MLM) baseline against ELECTRA, the two pretrained at equal FLOPs, fine-tuned on labelled tasks at
several label budgets with several seeds each.

    electra-jax experiment pretraining-helps --out experiments/helps --corpus A.txt B.txt \\
        --task topic=train.csv,test.csv --task author=train.csv,test.csv [--config mini] [--steps N]

Steps, each skipped when its output already exists (so a stopped run continues):
  1. a WordPiece vocabulary trained on the corpus (OUT/tokenizer), the examples (OUT/data)
  2. ELECTRA pretrained for `--steps` (OUT/electra), then the MLM baseline for as many steps as give
     the same pretraining FLOPs (`flops.py`; OUT/mlm)
  3. per task, a dev split held out of its *training* rows (at most `dev_size`, at most a fifth); per
     initialisation (random / mlm / electra), each combination of the `--choose` settings (e.g. the
     pooling) fine-tuned once on `dev_budget` labels and scored on the dev split; the best is kept
  4. per task, label budget and initialisation: `finetune` with its chosen settings and `--seeds` seeds
     on the budget's rows (a class-balanced subset of the training rows left after the dev split, the
     same for every initialisation), evaluated on the task's test file, which nothing here ever
     chooses anything on
  5. per task, label budget and initialisation, a linear probe on the frozen encoder (no choices made)
  6. OUT/results.json, OUT/results.md (median [min, max] over seeds, the dev scores, the probes) and
     OUT/results.png

Task files are CSV with a `text` and a `label` column. The rest of fine-tuning is fixed in advance (the
fine-tuning preset for the model's size; at least `--min-steps` optimizer steps, so that 100 labels get
more than 3 epochs) and is the same for every initialisation.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import itertools
import json
import math
import os
import shutil
import time

import numpy as np

INITS = ("random", "mlm", "electra")
# Chosen per initialisation on each task's dev split: the pooling, and the learning rate, since a
# pretrained encoder's larger weights (word embeddings' std 0.05-0.06 after `mini`, 0.02 at random
# init) move relatively less under the same Adam steps (topic dev, mean-pooled, 3e-4 -> 1e-3: ELECTRA
# 0.358 -> 0.493 (0.249 at 3e-3), MLM 0.397 -> 0.511, random 0.527 -> 0.597; 2026-12-02).
DEFAULT_CHOOSE = {"pooling": ["cls", "mean"], "optim.learning_rate": ["3e-4", "1e-3"]}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    train: str  # CSV: text,label
    test: str


def parse_task(text: str) -> Task:
    """NAME=TRAIN.csv,TEST.csv"""
    name, _, files = text.partition("=")
    train, _, test = files.partition(",")
    if not (name and train and test):
        from electra_jax.config import ConfigError

        raise ConfigError(f"--task {text!r}: expected NAME=TRAIN.csv,TEST.csv")
    return Task(name, train, test)


def read_rows(path: str) -> list[dict]:
    from electra_jax.config import ConfigError

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such task file (CSV with columns text,label)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"text", "label"} <= rows[0].keys():
        raise ConfigError(f"{path}: expected a CSV with a header and columns text,label")
    return rows


def write_rows(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    os.replace(path + ".tmp", path)


def balanced_subset(rows: list[dict], n: int | None, seed: int = 0) -> list[dict]:
    """`n` rows taken in turn from each class (each class shuffled with `seed`), so that a small budget
    still has every class while one exists; None or n >= len(rows): all rows."""
    if n is None or n >= len(rows):
        return list(rows)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
    out = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def dev_split(rows: list[dict], size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(dev, rest): `size` rows, at most a fifth, held out of a task's training rows (a fixed shuffle) to
    choose fine-tuning settings on; the label budgets are drawn from the rest."""
    n = min(size, len(rows) // 5)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order[:n]], [rows[i] for i in order[n:]]


def parse_choices(texts: list[str]) -> dict[str, list[str]]:
    """["pooling=cls,mean", "optim.learning_rate=3e-4,1e-3"] -> {field: [values]}."""
    from electra_jax.config import ConfigError

    choose = {}
    for text in texts:
        field, _, values = text.partition("=")
        if not field or not values or any(not v for v in values.split(",")):
            raise ConfigError(f"--choose {text!r}: expected FIELD=VALUE,VALUE,... (a fine-tuning config field)")
        choose[field] = values.split(",")
    return choose


def candidates(choose: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Every combination of the choices, as --config overrides (one empty candidate when none)."""
    return [tuple(f"--config.{f}={v}" for f, v in zip(choose, values)) for values in itertools.product(*choose.values())]


def candidate_name(overrides: tuple[str, ...]) -> str:
    return ",".join(o.removeprefix("--config.") for o in overrides) or "preset"


def equal_flops_steps(config, electra_steps: int) -> int:
    """MLM steps with the pretraining FLOPs of `electra_steps` ELECTRA steps (same batch and length)."""
    from electra_jax import config as config_lib
    from electra_jax.flops import train_flops_per_sequence

    mlm = config.copy_and_resolve_references()
    mlm.objective.name = "mlm"
    n, seq = config_lib.max_predictions_per_seq(config), config.data.seq_len
    electra_flops = train_flops_per_sequence(config_lib.model_spec(config), seq, n)
    mlm_flops = train_flops_per_sequence(config_lib.model_spec(mlm), seq, n)
    return max(1, round(electra_steps * electra_flops / mlm_flops))


def _finetune_one(out: str, init: str, random_init: bool, train: str, test: str, seeds: int,
                  finetune_config: str, min_steps: int, overrides: list[str], log) -> dict:
    from electra_jax.config import load_config
    from electra_jax.finetune.run import finetune

    n = len(read_rows(train))
    # Scored once, after the last epoch (the reported one): the test sets are larger than the training
    # subsets, and scoring every epoch of a 100-label run took most of its time.
    c = load_config(finetune_config, ["--config.task.name=classification", f"--config.task.train={train}",
                                      f"--config.task.dev={test}", "--config.task.text_a=text",
                                      "--config.task.label=label", "--config.eval_every_epoch=False",
                                      "--config.head=paper", *overrides])  # the recorded recipe's head
    c.num_epochs = max(3, math.ceil(min_steps * c.batch_size / n))
    # What makes a finished run this cell: a rerun with another preset, choice, seed count or a longer
    # pretrained encoder (a larger --steps in the same OUT) must not reuse it.
    key = {"finetune_config": finetune_config, "overrides": list(overrides), "num_epochs": c.num_epochs,
           "seeds": seeds, "init_step": None if random_init else checkpoint_step(init)}
    done, key_file = os.path.join(out, "results.json"), os.path.join(out, "cell.json")
    if os.path.exists(done):
        if os.path.exists(key_file):
            with open(key_file) as f:
                saved = json.load(f)
            changed = [k for k in key if saved.get(k) != key[k]]
        else:  # a cell from before cell.json: its config's chosen fields and epochs, and its seeds
            changed = _changed_settings(os.path.join(out, "config.json"), c, overrides)
            with open(done) as f:
                changed += ["seeds"] if len(json.load(f)["runs"]) != seeds else []
            if not changed:
                _write_json(key_file, key)
        if not changed:
            with open(done) as f:
                return json.load(f)
        log(f"    {out}: run with another {', '.join(changed)}, starting it again")
        shutil.rmtree(out)
    if os.path.exists(out):  # interrupted before its results: `finetune` resumes it (or refuses another run)
        log(f"    {out}: unfinished, continuing it")
    result = finetune(c, init, out, seeds=seeds, random_init=random_init, progress=False)
    if result.get("interrupted"):  # SIGTERM or Ctrl-C: the step is saved, the cell is not finished
        from electra_jax.pretrain import TrainingError

        raise TrainingError(f"{out} stopped in seed {result['seed']} (saved); rerun the same command to continue")
    _write_json(key_file, key)
    return result


def checkpoint_step(workdir: str) -> int | None:
    """The latest complete checkpoint's step in a pretraining WORKDIR (what fine-tuning starts from)."""
    path = os.path.join(workdir, "checkpoints")
    steps = [int(name) for name in os.listdir(path) if name.isdigit()] if os.path.isdir(path) else []
    return max(steps, default=None)


def _write_json(path: str, value, indent: int | None = None) -> None:
    """Whole or not at all: a stopped run never leaves a file that looks finished."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=indent)
    os.replace(path + ".tmp", path)


def _changed_settings(saved_config: str, config, overrides: list[str]) -> list[str]:
    """The fields (of `overrides` and the epochs) in which a finished run's config.json differs from
    `config`: a cell chosen anew (another pooling or learning rate, say) must not reuse an old result."""
    with open(saved_config) as f:
        saved = json.load(f)
    fields = ["num_epochs"] + [o.removeprefix("--config.").partition("=")[0] for o in overrides]

    def get(tree, field):
        for key in field.split("."):
            tree = tree.get(key) if isinstance(tree, dict) else None
        return tree

    now = config.to_dict()
    return [f for f in fields if get(saved, f) != get(now, f)]


def linear_probe(init: str, random_init: bool, train: str, test: str, max_len: int, steps: int = 400,
                 l2: float = 1e-3, batch: int = 256) -> float:
    """Test accuracy of a logistic regression on the encoder's frozen mean-pooled last-layer vectors
    (standardised on the training rows; full-batch Adam at 1e-2, `steps` steps, L2 `l2`: fixed in
    advance, the same for every initialisation). What pretraining put into the features, before
    fine-tuning changes them; `random_init`: the same shapes, initialised as fine-tuning does."""
    import jax
    import jax.numpy as jnp
    import optax

    from electra_jax import config as config_lib
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.finetune.run import load_init
    from electra_jax.finetune.tasks import encode, label_names, read_table, task_spec
    from electra_jax.model import Classifier, frozen_features

    fields, tokens, backbone, tokenizer_path = load_init(init)
    c = config_lib.finetune_config()
    c.model.update(fields)
    c.model.dtype = "float32"
    spec = config_lib.model_spec(c)
    if random_init:
        ids = jnp.zeros((1, max_len), jnp.int32)
        backbone = Classifier(spec, 2).init({"params": jax.random.key(0)}, ids, ids, jnp.ones_like(ids))["params"]
    task = task_spec("classification", text_a="text", label="label")
    examples = {name: read_table(path, task) for name, path in (("train", train), ("test", test))}
    labels = label_names(examples["train"], task)
    tokenizer = load_tokenizer(tokenizer_path)
    features = jax.jit(lambda ids, mask: frozen_features(spec, backbone, ids, jnp.zeros_like(ids), mask))
    x, y = {}, {}
    for name, ex in examples.items():
        data = encode(ex, task, tokenizer, max_len, labels, tokens["pad_id"])
        x[name] = np.concatenate([np.asarray(features(data["input_ids"][i:i + batch], data["input_mask"][i:i + batch]))
                                  for i in range(0, len(data["input_ids"]), batch)])
        y[name] = data["labels"]
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
    x = {k: (v - mean) / std for k, v in x.items()}

    def loss(w):
        logits = x["train"] @ w["w"] + w["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y["train"]).mean() + l2 * jnp.sum(w["w"] ** 2)

    opt = optax.adam(1e-2)

    @jax.jit
    def fit(w):
        def step(carry, _):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(step, (w, opt.init(w)), None, length=steps)
        return w

    w = fit({"w": jnp.zeros((x["train"].shape[1], len(labels))), "b": jnp.zeros(len(labels))})
    return float(np.mean(np.asarray(x["test"] @ w["w"] + w["b"]).argmax(1) == y["test"]))


def _pretrain(config, workdir: str, log) -> float:
    """Pretrain (or resume) to config.num_train_steps; returns the seconds spent on it in all runs of
    the experiment (kept in WORKDIR/experiment_seconds.json, so a resumed experiment reports the whole)."""
    from electra_jax.pretrain import TrainingError, pretrain

    start = time.perf_counter()
    spent_file = os.path.join(workdir, "experiment_seconds.json")
    spent = 0.0
    if os.path.exists(spent_file):
        with open(spent_file) as f:
            spent = json.load(f)["seconds"]
    finished = (checkpoint_step(workdir) or 0) >= config.num_train_steps
    try:
        result = pretrain(config, workdir, progress=False)
    finally:
        if not finished:  # (a rerun that only restores the last checkpoint did no pretraining)
            spent += time.perf_counter() - start
        if os.path.isdir(workdir):
            with open(spent_file, "w") as f:
                json.dump({"seconds": round(spent, 1)}, f)
    if result["step"] < config.num_train_steps:  # SIGTERM or a preemption: saved, not finished
        raise TrainingError(f"{workdir} stopped at step {result['step']} of {config.num_train_steps} (saved); "
                            "rerun the same command to continue")
    evals = result["eval"]
    if not evals:  # finished in an earlier run of the experiment: its last eval is in the metrics
        from electra_jax.writers import read_metrics

        evals = next((r for r in reversed(read_metrics(workdir)) if r.get("split") == "eval"), {})
        evals = {k: v for k, v in evals.items() if k not in ("step", "split")}
    log(f"    {workdir}: step {result['step']} in {spent:.0f} s; eval "
        + ", ".join(f"{k} {v:.3f}" for k, v in evals.items()))
    return spent


def run(config, out: str, corpus: list[str], tasks: list[Task], *, steps: int | None = None,
        budgets: tuple[int | None, ...] = (100, 1000, None), seeds: int = 3,
        finetune_config: str = "finetune/small", min_steps: int = 500,
        finetune_overrides: tuple[str, ...] = (), choose: dict[str, list[str]] | None = None,
        dev_size: int = 1000, dev_budget: int = 1000, probe_max_len: int = 64, log=print) -> dict:
    """`config`: the pretraining recipe (its vocab_size is the vocabulary trained on `corpus`); `choose`:
    fine-tuning config fields and the values to choose among on each task's dev split, per
    initialisation (default: DEFAULT_CHOOSE)."""
    from electra_jax.config import ConfigError, load_config, max_predictions_per_seq, model_spec, validate
    from electra_jax.data.builder import BuildArgs, build, read_manifest
    from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer
    from electra_jax.flops import train_flops_per_sequence

    start = time.perf_counter()
    choose = DEFAULT_CHOOSE if choose is None else choose
    options = candidates(choose)
    for task in tasks:  # bad task files fail now, not after an hour of pretraining
        n, _ = len(read_rows(task.train)), read_rows(task.test)
        if len(options) > 1 and n < 10:
            raise ConfigError(f"{task.train}: {n} rows; choosing fine-tuning settings holds a fifth of them out "
                              "as a dev split, so it needs at least 10 (or --choose none)")
    for option in options:  # and so do bad --choose fields or values
        validate(load_config(finetune_config, [*finetune_overrides, *option]))
    config = config.copy_and_resolve_references()
    if steps:
        config.num_train_steps = steps
    vocab_size = config.model.vocab_size
    tok_dir, data = os.path.join(out, "tokenizer"), os.path.join(out, "data")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        log(f"1/6 a {vocab_size}-token vocabulary from {len(corpus)} corpus file(s) -> {tok_dir}")

        def lines():
            for path in corpus:
                with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
                    yield from (line for line in f if line.strip())

        save_tokenizer(train_tokenizer(lines(), vocab_size), tok_dir + ".tmp")
        os.replace(tok_dir + ".tmp", tok_dir)
    if read_manifest(data) is None:
        log(f"    examples -> {data}")
        build(BuildArgs(tokenizer=tok_dir, out=data, inputs=list(corpus), seq_len=config.data.seq_len,
                        shards=4, eval_fraction=0.01, workers=2, progress=False))
    config.data.path = data
    config.model.vocab_size = vocab_size
    config.tokens.update(pad_id=0, cls_id=2, sep_id=3, mask_id=4)  # train_tokenizer's ids

    mlm = config.copy_and_resolve_references()
    mlm.objective.name = "mlm"
    mlm.num_train_steps = equal_flops_steps(config, config.num_train_steps)
    n, seq = max_predictions_per_seq(config), config.data.seq_len
    flops = {name: c.num_train_steps * c.batch_size * train_flops_per_sequence(model_spec(c), seq, n)
             for name, c in (("electra", config), ("mlm", mlm))}
    log(f"2/6 pretraining ELECTRA {config.num_train_steps} steps and MLM {mlm.num_train_steps} steps "
        f"({flops['electra']:.3g} and {flops['mlm']:.3g} FLOPs)")
    seconds = {name: round(_pretrain(c, os.path.join(out, name), log))
               for name, c in (("electra", config), ("mlm", mlm))}

    rows, chosen, dev_scores = {}, {}, {}
    log(f"3/6 choosing {', '.join(choose) or 'nothing'} per initialisation on dev splits of the training data")
    for task in tasks:
        dev, rows[task.name] = dev_split(read_rows(task.train), dev_size)
        dev_file = os.path.join(out, "tasks", task.name, "dev.csv")
        _write_once(dev_file, dev)
        if len(options) == 1:
            chosen[task.name] = {init: options[0] for init in INITS}
            continue
        train_file, label, _ = _budget_file(out, task.name, rows[task.name], dev_budget)
        for init in INITS:
            scores = {}
            for option in options:
                result = _finetune_one(os.path.join(out, "dev", task.name, init, candidate_name(option)),
                                       _source(out, init), init == "random", train_file, dev_file, 1,
                                       finetune_config, min_steps, [*finetune_overrides, *option], log)
                scores[option] = result["runs"][0]["dev/accuracy"]
            chosen.setdefault(task.name, {})[init] = max(options, key=scores.get)  # ties: the first listed
            dev_scores.setdefault(task.name, {})[init] = {candidate_name(o): a for o, a in scores.items()}
            log(f"    {task.name:>10} {init:>8}: " + ", ".join(f"{candidate_name(o)} {a:.3f}" for o, a in scores.items())
                + f" (dev, {label} labels) -> {candidate_name(chosen[task.name][init])}")

    log("4/6 fine-tuning")
    cells = []
    # The smallest label budgets first, where pretraining matters most (and they cost least).
    for budget, task in itertools.product(budgets, tasks):
        train_file, label, n = _budget_file(out, task.name, rows[task.name], budget)
        for init in INITS:
            option = chosen[task.name][init]
            result = _finetune_one(os.path.join(out, "finetune", task.name, label, init), _source(out, init),
                                   init == "random", train_file, task.test, seeds, finetune_config,
                                   min_steps, [*finetune_overrides, *option], log)
            accuracy = [r["dev/accuracy"] for r in result["runs"]]  # the task's test file
            cells.append({"task": task.name, "labels": label, "train_examples": n, "init": init,
                          "settings": candidate_name(option), "accuracy": accuracy,
                          "median": float(np.median(accuracy)),
                          "min": float(np.min(accuracy)), "max": float(np.max(accuracy))})
            log(f"    {task.name:>10} {label:>5} labels {init:>8}: median {cells[-1]['median']:.3f} "
                f"[{cells[-1]['min']:.3f}, {cells[-1]['max']:.3f}]")

    log("5/6 linear probes on the frozen encoders (the same label subsets)")
    probes = []
    for budget, task in itertools.product(budgets, tasks):
        train_file, label, n = _budget_file(out, task.name, rows[task.name], budget)
        for init in INITS:
            path = os.path.join(out, "probe", task.name, label, f"{init}.json")
            step = None if init == "random" else checkpoint_step(_source(out, init))
            saved = {}
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
            # A probe at another length, or of another checkpoint (probes from before the step was
            # recorded are of the checkpoint there is), is not this one.
            if not saved or saved["max_len"] != probe_max_len or saved.get("init_step", step) != step:
                accuracy = linear_probe(_source(out, init), init == "random", train_file, task.test, probe_max_len)
                saved = {"accuracy": accuracy, "max_len": probe_max_len, "init_step": step}
                _write_json(path, saved)
            probes.append({"task": task.name, "labels": label, "train_examples": n, "init": init,
                           "accuracy": saved["accuracy"]})

    names = [task.name for task in tasks]
    cells.sort(key=lambda c: names.index(c["task"]))  # the table by task (stable: budgets stay in order)
    probes.sort(key=lambda c: names.index(c["task"]))
    results = {"config": config.to_dict(), "pretrain_steps": {"electra": config.num_train_steps,
                                                          "mlm": mlm.num_train_steps},
               "pretrain_flops": flops, "pretrain_seconds": seconds, "seeds": seeds,
               "finetune": {"config": finetune_config, "overrides": list(finetune_overrides),
                            "min_steps": min_steps, "choose": choose, "dev_size": dev_size,
                            "dev_budget": dev_budget},
               "dev": dev_scores, "probe": probes,
               "corpus": corpus, "tasks": [dataclasses.asdict(t) for t in tasks], "cells": cells,
               "seconds": round(time.perf_counter() - start), "machine": _machine(),
               "date": time.strftime("%Y-%m-%d")}
    log("6/6 results")
    _write_json(os.path.join(out, "results.json"), results, indent=1)
    table = report(results)
    with open(os.path.join(out, "results.md.tmp"), "w") as f:
        f.write(table)
    os.replace(os.path.join(out, "results.md.tmp"), os.path.join(out, "results.md"))
    plot(results, out)
    log(table)
    return results


def _machine() -> str:
    """What the numbers were measured on, e.g. "1 cpu device(s), 2 CPU cores"."""
    import jax

    return (f"{jax.device_count()} {jax.devices()[0].device_kind} device(s), "
            f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPU cores")


def _source(out: str, init: str) -> str:
    """The workdir a fine-tuning run starts from (random: ELECTRA's, for its shapes and vocabulary)."""
    return os.path.join(out, "electra" if init == "random" else init)


def _budget_file(out: str, task: str, rows: list[dict], budget: int | None) -> tuple[str, str, int]:
    """(CSV of the budget's class-balanced subset of `rows`, its label, its size), written once."""
    subset = balanced_subset(rows, budget)
    label = "all" if budget is None or budget >= len(rows) else str(budget)
    path = os.path.join(out, "tasks", task, f"train-{label}.csv")
    _write_once(path, subset)
    return path, label, len(subset)


def _write_once(path: str, rows: list[dict]) -> None:
    """Write a split file, or check that the one there holds these rows: a rerun with another task file
    or --dev-size must not fine-tune on an old split (a dev row could be a training row now)."""
    from electra_jax.config import ConfigError

    if not os.path.exists(path):
        return write_rows(path, rows)
    if [(r["text"], r["label"]) for r in read_rows(path)] != [(r["text"], r["label"]) for r in rows]:
        out = os.path.dirname(os.path.dirname(os.path.dirname(path)))
        raise ConfigError(f"{path} was split from another training file or --dev-size than this run's; use a "
                          f"new --out, or remove {out}/tasks, dev, finetune and probe to redo every run")


def report(results: dict) -> str:
    """results.md: what was run where, the fine-tuned table, the dev scores, the probes. Sections are
    separated by blank lines (a line right after a table would render as one of its rows)."""
    steps, flops, seconds = results["pretrain_steps"], results["pretrain_flops"], results["pretrain_seconds"]
    head = (f"# pretraining-helps, {results.get('date', '')}, {results.get('machine', '')}\n\n"
            "Pretraining at equal FLOPs: " + "; ".join(
                f"{name.upper()} {steps[name]:,} steps, {flops[name]:.3g} FLOPs, {seconds[name]:,} s"
                for name in ("electra", "mlm")) + " (over all sittings).\n\n"
            f"Fine-tuned, test accuracy: median [min, max] over {results['seeds']} seed(s)"
            + (", settings chosen on the dev split (below)" if results["dev"] else "")
            + "; the differences are between medians, in points.")
    sections = [head, markdown(results["cells"]), dev_markdown(results["dev"]), probe_markdown(results["probe"])]
    return "\n\n".join(s for s in sections if s) + "\n"


def dev_markdown(dev_scores: dict) -> str:
    """The dev-split accuracy of each setting tried, per task and initialisation ("" when none chosen)."""
    if not dev_scores:
        return ""
    lines = ["Dev split (held out of the training rows; chooses the settings above):", ""]
    for task, by_init in dev_scores.items():
        for init, scores in by_init.items():
            best = max(scores, key=scores.get)
            lines.append(f"- {task} {init}: " + ", ".join(f"**{k} {v:.3f}**" if k == best else f"{k} {v:.3f}"
                                                          for k, v in scores.items()))
    return "\n".join(lines)


def probe_markdown(probes: list[dict]) -> str:
    """Linear-probe test accuracy per task, label budget and initialisation ("" when none)."""
    if not probes:
        return ""
    lines = ["Linear probe on the frozen encoders (mean-pooled last layer, logistic regression fixed in "
             "advance; test accuracy):", "", "| task | labels | " + " | ".join(INITS) + " |",
             "|---|---|" + "---|" * len(INITS)]
    rows: dict[tuple[str, str], dict] = {}
    for p in probes:
        rows.setdefault((p["task"], p["labels"]), {})[p["init"]] = p["accuracy"]
    for (task, labels), by_init in rows.items():
        lines.append(f"| {task} | {labels} | " + " | ".join(f"{by_init[i]:.3f}" if i in by_init else "" for i in INITS)
                     + " |")
    return "\n".join(lines)


def markdown(cells: list[dict]) -> str:
    """One row per task and label budget: each initialisation's median accuracy [min, max] over seeds,
    and ELECTRA's median minus the others' in points (the issue's question)."""
    lines = ["| task | labels | " + " | ".join(INITS) + " | electra - random | electra - mlm |",
             "|---|---|" + "---|" * (len(INITS) + 2)]
    rows: dict[tuple[str, str], dict] = {}
    for c in cells:
        rows.setdefault((c["task"], c["labels"]), {})[c["init"]] = c
    for (task, labels), by_init in rows.items():
        cols = [f"{by_init[i]['median']:.3f} [{by_init[i]['min']:.3f}, {by_init[i]['max']:.3f}]"
                if i in by_init else "" for i in INITS]
        cols += [f"{100 * (by_init['electra']['median'] - by_init[i]['median']):+.1f}"
                 if "electra" in by_init and i in by_init else "" for i in ("random", "mlm")]
        lines.append(f"| {task} | {labels} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(results: dict, out: str) -> None:
    """Accuracy against label budget per task; pretraining losses against FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from electra_jax.writers import read_metrics

    tasks = list(dict.fromkeys(c["task"] for c in results["cells"]))
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.5 * (len(tasks) + 1), 3.6))
    for ax, task in zip(axes, tasks):
        for init, color in zip(INITS, ("tab:gray", "tab:orange", "tab:blue")):
            cells = [c for c in results["cells"] if c["task"] == task and c["init"] == init]
            x = [c["train_examples"] for c in cells]
            ax.errorbar(x, [c["median"] for c in cells],
                        yerr=[[c["median"] - c["min"] for c in cells], [c["max"] - c["median"] for c in cells]],
                        label=init, color=color, marker="o", capsize=3)
            probes = [p for p in results.get("probe", []) if p["task"] == task and p["init"] == init]
            if probes:
                ax.plot([p["train_examples"] for p in probes], [p["accuracy"] for p in probes], color=color,
                        linestyle="--", marker=".", label=f"{init}, linear probe")
        ax.set_xscale("log")
        ax.set_title(f"{task}: test accuracy")
        ax.set_xlabel("training labels")
        ax.set_ylabel("test accuracy (median, min-max over seeds)")
        ax.legend()
    ax = axes[-1]
    for name, color in (("electra", "tab:blue"), ("mlm", "tab:orange")):
        records = [r for r in read_metrics(os.path.join(out, name)) if r.get("split") == "train"]
        per_step = results["pretrain_flops"][name] / results["pretrain_steps"][name]
        ax.plot([r["step"] * per_step for r in records], [r["mlm_loss"] for r in records], color=color,
                label=f"{name}: MLM loss ({'its generator' if name == 'electra' else 'the model'})")
    ax.set_xlabel("pretraining FLOPs")
    ax.set_ylabel("training MLM loss")
    ax.set_title("pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=110)
    plt.close(fig)
