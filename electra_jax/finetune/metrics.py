"""GLUE's official metrics and CoNLL entity F1, on host numpy arrays of predictions and labels."""

from __future__ import annotations

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
