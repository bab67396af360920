"""`electra-jax predict`: a fine-tuned model -- a `finetune` WORKDIR (its best seed, or --seed) or its
export -- on new rows of its task's kind, batched and sharded as evaluation.

Inputs: the task's own file formats, with or without the gold column (CSV/TSV/JSONL for sentence tasks,
CoNLL for tagging, SQuAD-format JSON for QA), or plain lines of text (`.txt`, or `-` for stdin: one
example per line; a pair's two texts separated by a tab; tagging: words separated by spaces). Output:
JSON lines or CSV rows (`outputs.rows`), or for QA SQuAD's predictions.json (and null_odds.json beside
it, as OUT.null_odds.json, where the model predicts "no answer"); `-` for stdout.
"""

from __future__ import annotations

import json
import os
import sys

import jax

from electra_jax import config as config_lib
from electra_jax.finetune import qa
from electra_jax.finetune.run import (EXPORT_TASK_KEY, classifier_setup, encode_task, predict,
                                      restore_finetuned, make_predictor)
from electra_jax.finetune.tasks import Examples, TaskError, TaskSpec, read_conll, read_table, task_spec
from electra_jax.fs import exists, host_tf, read_text, write_text_atomic

FINETUNED = {"ElectraForSequenceClassification": "sequence_classifier",
             "ElectraForTokenClassification": "token_classifier",
             "ElectraForQuestionAnswering": "question_answerer"}


def load_model(model: str, seed: int | None = None):
    """(config, task spec, params) of a fine-tuning WORKDIR or of an export of one."""
    from electra_jax.data.tokenizer import load_tokenizer, special_ids
    from electra_jax.hf import from_hf_state_dict, read_pretrained, spec_from_hf_config

    path = os.path.join(model, "config.json")
    if not exists(path):
        raise TaskError(f"{model}: no config.json; expected a `finetune` --workdir or its export")
    saved = json.loads(read_text(path))
    if "task" in saved:
        config, spec, _, params = restore_finetuned(model, seed)
        return config, spec, params
    if "model" in saved or exists(os.path.join(model, "checkpoints")):
        raise TaskError(f"{model} is a pretraining workdir, not a fine-tuned model; fine-tune it first "
                        "(`electra-jax finetune --init ...`) and predict with that workdir")
    architecture = (saved.get("architectures") or ["(no architecture)"])[0]
    if architecture not in FINETUNED:
        raise TaskError(f"{model} holds an {architecture}, not a fine-tuned model ({', '.join(FINETUNED)}); "
                        "give a `finetune` --workdir or its export")
    task = saved.get(EXPORT_TASK_KEY)
    if task is None:
        raise TaskError(f"{model}: an {architecture} without electra-jax's task fields (exported elsewhere, or "
                        "before they were written); predict from the fine-tuning workdir, or export it again")
    hf, weights = read_pretrained(model)
    model_spec = spec_from_hf_config(hf)
    config = config_lib.finetune_config()
    config.model.update(vocab_size=model_spec.vocab_size, embedding_size=model_spec.embedding_size,
                        hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                        max_position_embeddings=model_spec.max_position_embeddings,
                        type_vocab_size=model_spec.type_vocab_size, layer_norm_eps=model_spec.layer_norm_eps)
    task = dict(task)
    config.batch_size = task.pop("batch_size", config.batch_size)  # evaluation's batches, so its numbers
    config.eval_dtype = task.pop("eval_dtype", config.eval_dtype)
    config.task.update(task)
    config.task.tokenizer = model
    ids = special_ids(load_tokenizer(model), model)
    config.tokens.update(pad_id=ids.pad, cls_id=ids.cls, sep_id=ids.sep, mask_id=ids.mask)
    config.head = "paper" if FINETUNED[architecture] == "token_classifier" else "hf"
    config.pooling = "cls"
    spec = task_spec(task["name"], task["text_a"], task["text_b"], task["label"])
    return config, spec, from_hf_state_dict(weights, model_spec, FINETUNED[architecture])


def read_input(path: str, spec: TaskSpec, stdin=None):
    """(examples, labelled): the task's file format (the gold column optional) or plain lines."""
    plain = path == "-" or path.endswith(".txt")
    if spec.kind == "qa":
        if plain:
            raise TaskError(f"{path}: question answering reads SQuAD-format JSON ({{data: [{{paragraphs: "
                            "[{context, qas: [{id, question}]}]}]}}), not lines of text")
        data = qa.read_squad(path, labelled=False)
        return data, any(q.answers or q.is_impossible for q in data.questions)
    if plain:
        if path == "-":
            lines = (stdin or sys.stdin).read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        lines = [line for line in lines if line.strip()]
        if not lines:
            raise TaskError(f"{path}: no lines of text")
        if spec.kind == "tagging":
            words = [line.split() for line in lines]
            return Examples(path, words, None, [["O"] * len(w) for w in words]), False
        if spec.text_b:
            pairs = [line.split("\t") for line in lines]
            bad = [n for n, p in enumerate(pairs, 1) if len(p) != 2]
            if bad:
                raise TaskError(f"{path}: line {bad[0]} is not two texts separated by a tab, which this "
                                f"pair task ({spec.text_a}, {spec.text_b}) needs")
            return Examples(path, [a for a, _ in pairs], [b for _, b in pairs], [None] * len(pairs)), False
        return Examples(path, lines, None, [None] * len(lines)), False
    if spec.kind == "tagging":
        examples = read_conll(path, tags_optional=True)
        return examples, all(tags is not None for tags in examples.labels)
    examples = read_table(path, spec, label_optional=True)
    return examples, all(label is not None for label in examples.labels)


def model_outputs(config, spec: TaskSpec, params, examples, labelled: bool, dtype: str = ""):
    """({metric: value} when `labelled`, {file name: text}) of the model on `examples`, batched and
    sharded as evaluation (its eval_dtype unless `dtype`)."""
    from electra_jax.data.tokenizer import load_tokenizer

    labels = list(config.task.labels)
    if spec.kind in ("classification", "tagging") and not labelled:  # any known class: not read as gold
        fill = [[labels[0]] * len(w) for w in examples.text_a] if spec.kind == "tagging" else [labels[0]] * len(examples.text_a)
        examples = Examples(examples.source, examples.text_a, examples.text_b, fill)
    elif spec.kind == "regression" and not labelled:
        examples = Examples(examples.source, examples.text_a, examples.text_b, [0.0] * len(examples.text_a))
    _, evals, _, _ = encode_task(config, spec, None, {"input": examples}, load_tokenizer(config.task.tokenizer),
                                 log=lambda line: print(line, file=sys.stderr), labels=labels, labelled=labelled)
    data, evaluate = evals["input"]
    num_outputs = {"regression": 1, "qa": 2}.get(spec.kind, len(labels))
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    s = classifier_setup(config, num_outputs, spec.kind, answerable=config.task.answerable)
    placed = jax.device_put(params, s.state_shardings.params)
    predictor = make_predictor(s, dtype or config.get("eval_dtype", ""))
    return evaluate(predict(s, placed, data, config.batch_size, predictor))


def run_predict(model: str, input_path: str, out: str, seed: int | None = None, fmt: str | None = None,
                dtype: str = "", stdin=None, stdout=None) -> dict:
    """Predictions of `model` on `input_path` written to `out`; returns {rows, scores (when labelled)}."""
    from electra_jax.finetune.outputs import serialize

    fmt = fmt or ("csv" if out.endswith(".csv") else "jsonl")
    config, spec, params = load_model(model, seed)
    examples, labelled = read_input(input_path, spec, stdin)
    scores, files = model_outputs(config, spec, params, examples, labelled, dtype)
    if spec.kind == "qa":
        text = files["predictions.json"]
        if "null_odds.json" in files and out != "-":
            write_text_atomic(os.path.splitext(out)[0] + ".null_odds.json", files["null_odds.json"])
    else:
        text = serialize([json.loads(line) for line in files["predictions.jsonl"].splitlines()], fmt)
    if out == "-":
        (stdout or sys.stdout).write(text)
    else:
        write_text_atomic(out, text)
    n = len(examples.questions) if spec.kind == "qa" else len(examples.text_a)
    return {"rows": n, "scores": scores}


def write_glue_test(workdir: str, seed: int | None = None, data_dir: str | None = None,
                    download: bool = False, log=print) -> list[str]:
    """The GLUE benchmark's submission files for a fine-tuned GLUE task (its best seed, or `seed`):
    WORKDIR/test/<Task>.tsv, `index<TAB>prediction` in test-set order, labels as the benchmark reads
    them (class indices for CoLA, SST-2, MRPC, QQP; names for MNLI, QNLI, RTE and AX; STS-B on 0-5)."""
    from electra_jax.finetune.tasks import read_tfds_test

    config, spec, params = load_model(workdir, seed)
    if not spec.submissions:
        raise TaskError(f"task {spec.name!r} has no GLUE test split to submit; `electra-jax predict` writes "
                        "predictions for any file (SQuAD's test set is hidden: its site runs the model)")
    written = []
    host_tf().io.gfile.makedirs(os.path.join(workdir, "test"))
    for dataset, split, name in spec.submissions:
        examples, index, names = read_tfds_test(spec, dataset, split, data_dir or config.task.tfds_data_dir or None,
                                                download)
        _, files = model_outputs(config, spec, params, examples, labelled=False)
        predictions = [json.loads(line)["prediction"] for line in files["predictions.jsonl"].splitlines()]
        if spec.kind == "regression":
            values = [f"{p:.3f}" for p in predictions]
        elif spec.submit_indices:
            values = [str(names.index(p)) for p in predictions]
        else:
            values = predictions
        path = os.path.join(workdir, "test", name)
        write_text_atomic(path, "index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(index, values)))
        log(f"{dataset}:{split}: {len(values):,} test predictions -> {path}")
        written.append(path)
    return written
