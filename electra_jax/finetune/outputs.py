"""Predictions a person can read, score or submit, from a model's outputs on a split (host numpy).

Sentence tasks give one row per example (its text, the gold label when there is one, the prediction
and its probability or score); tagging one row per sentence (words, gold and predicted tags per word);
question answering SQuAD's two files, `predictions.json` (id -> answer, "" for no answer) and
`null_odds.json` (id -> no-answer score), the shapes the official evaluator reads.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

from electra_jax.finetune.tasks import Examples, TaskSpec

# A JSON number for "no valid span at all" (the decoder's +inf, which strict JSON cannot hold).
NO_SPAN_ODDS = 1e30


def rows(spec: TaskSpec, examples: Examples, labels: list[str], outputs: np.ndarray, inputs: dict,
         labelled: bool = True) -> list[dict]:
    """One dict per example, in the split's order. Regression scores are on the data's scale (STS-B's
    0-5, not the 0-1 the model is trained on); tagging has a prediction for each word the model read
    (null for words past task.max_len)."""
    out = []
    texts = {spec.text_a: examples.text_a}
    if examples.text_b is not None:
        texts[spec.text_b] = examples.text_b
    if spec.kind == "regression":
        scores = outputs[..., 0] / spec.label_scale
        for i, score in enumerate(scores):
            row = {name: values[i] for name, values in texts.items()}
            if labelled:
                row["gold"] = float(examples.labels[i]) / spec.label_scale
            out.append({**row, "prediction": float(score)})
        return out
    probs = _softmax(outputs)
    if spec.kind == "tagging":
        first = inputs["label_weights"] > 0  # each word's first sub-token, in word order
        for i, words in enumerate(examples.text_a):
            predicted = [labels[t] for t in probs[i][first[i]].argmax(-1)]
            row = {"tokens": list(words)}
            if labelled:
                row["gold"] = list(examples.labels[i])
            out.append({**row, "prediction": predicted + [None] * (len(words) - len(predicted))})
        return out
    best = probs.argmax(-1)
    for i, k in enumerate(best):
        row = {name: values[i] for name, values in texts.items()}
        if labelled:
            row["gold"] = examples.labels[i]
        out.append({**row, "prediction": labels[k], "probability": float(probs[i, k])})
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def squad_files(predictions: dict[str, str], no_answer: dict[str, float], threshold: float,
                unanswerable: bool) -> dict[str, str]:
    """{"predictions.json": ..., "null_odds.json": ...} as SQuAD 2.0's evaluator reads them (1.1: the
    predictions only). An answer is "" where its no-answer score is above `threshold`, the rule the
    reported scores use, so the evaluator given the same threshold finds the same numbers."""
    if not unanswerable:
        return {"predictions.json": json.dumps(predictions, indent=1, ensure_ascii=False)}
    answers = {q: "" if no_answer[q] > threshold else text for q, text in predictions.items()}
    odds = {q: NO_SPAN_ODDS if math.isinf(v) else float(v) for q, v in no_answer.items()}
    return {"predictions.json": json.dumps(answers, indent=1, ensure_ascii=False),
            "null_odds.json": json.dumps(odds, indent=1)}


def serialize(table: list[dict], fmt: str) -> str:
    """Rows as JSON lines or CSV (lists, e.g. tagging's, as JSON inside the CSV field)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table)
    f = io.StringIO()
    columns = list(dict.fromkeys(k for r in table for k in r))
    writer = csv.DictWriter(f, columns, lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()})
    return f.getvalue()
