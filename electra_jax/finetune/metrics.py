"""GLUE's official metrics, CoNLL entity F1 and SQuAD's exact match and F1, on host values."""

from __future__ import annotations

import collections
import re
import string

import numpy as np
import scipy.stats


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold)) if len(gold) else 0.0


def binary_f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    tp = np.sum((pred == positive) & (gold == positive))
    fp = np.sum((pred == positive) & (gold != positive))
    fn = np.sum((pred != positive) & (gold == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary MCC; 0 when a row or column of the confusion matrix is empty (as scikit-learn)."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(scipy.stats.pearsonr(pred, gold)[0]) if np.std(pred) and np.std(gold) else 0.0


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(scipy.stats.spearmanr(pred, gold)[0]) if np.std(pred) and np.std(gold) else 0.0


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans of a BIO/IOB1 tag sequence, by conlleval's rules: a span starts at B-X,
    or at I-X after O or after another type, and ends before the next tag that does not continue it."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        continues = prefix == "I" and label == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = i, label
    return spans


def entity_f1(pred: list[list[str]], gold: list[list[str]]) -> float:
    """Micro F1 over exact entity spans (conlleval)."""
    tp = n_pred = n_gold = 0
    for p, g in zip(pred, gold):
        ps, gs = entities(p), entities(g)
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    return 2 * tp / (n_pred + n_gold) if tp else 0.0


# ----------------------------------------------------------------------------- SQuAD (official v2.0 script)


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation, drop the articles a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())



def squad_exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def squad_f1(gold: str, pred: str) -> float:
    """Token F1 after normalisation; when either side is empty (no answer), 1 if both are, else 0."""
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if not same:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(gold: dict[str, list[str]], predictions: dict[str, str],
                 no_answer: dict[str, float] | None = None, threshold: float = 0.0) -> dict[str, float]:
    """The official evaluation (SQuAD 2.0's script, which gives 1.1's numbers on answerable questions):
    exact and f1 in percent, each the max over the gold answers ([""] when none normalises to text).

    With `no_answer` scores (2.0), a question is predicted unanswerable when its score > threshold;
    also HasAns_/NoAns_ subsets and best_exact / best_f1 at the threshold that maximises each (chosen on
    this split, as the script does: an optimistic number, reported beside the threshold-0 one)."""
    exact, f1, has_answer = {}, {}, {}
    for qid, answers in gold.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        has_answer[qid] = answers != [""]
        pred = predictions.get(qid, "")
        exact[qid] = max(squad_exact(a, pred) for a in answers)
        f1[qid] = max(squad_f1(a, pred) for a in answers)
    percent = lambda scores, ids: 100.0 * sum(scores[q] for q in ids) / len(ids) if ids else 0.0
    if no_answer is None:
        return {"exact": percent(exact, list(gold)), "f1": percent(f1, list(gold))}

    def thresholded(scores):
        return {q: float(not has_answer[q]) if no_answer[q] > threshold else s for q, s in scores.items()}

    out = {}
    for name, scores in (("exact", exact), ("f1", f1)):
        at = thresholded(scores)
        out[name] = percent(at, list(gold))
        out[f"HasAns_{name}"] = percent(at, [q for q in gold if has_answer[q]])
        out[f"NoAns_{name}"] = percent(at, [q for q in gold if not has_answer[q]])
        out[f"best_{name}"], out[f"best_{name}_thresh"] = _best_threshold(scores, predictions, no_answer,
                                                                          has_answer)
    return out


def _best_threshold(scores, predictions, no_answer, has_answer) -> tuple[float, float]:
    """The official `find_best_thresh`: sweep the threshold up through the sorted no-answer scores,
    starting from "everything unanswerable"."""
    current = best = sum(not h for h in has_answer.values())
    threshold = 0.0
    for qid in sorted(no_answer, key=lambda q: no_answer[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        else:
            current -= 1 if predictions.get(qid) else 0
        if current > best:
            best, threshold = current, no_answer[qid]
    return 100.0 * best / len(scores), threshold
