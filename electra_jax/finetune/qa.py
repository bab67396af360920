"""Extractive question answering (SQuAD 1.1 / 2.0 and any SQuAD-format JSON): reading, windows, decoding.

As google-research/electra's `finetune/qa/qa_tasks.py` and `qa_metrics.py`, with one change of means:
answers are mapped to sub-tokens through the fast tokenizer's character offsets, and predicted spans
back to the context by the same offsets, instead of the original's whitespace-token bookkeeping and
`get_final_text` heuristic (which exist because WordPiece there had no offsets).

    [CLS] question (<= max_query_len tokens) [SEP] context window [SEP]

Windows over a long context start every `doc_stride` tokens (the original's meaning of the stride: the
step between window starts, not HF's overlap). In training a window that does not hold the whole
answer, and an unanswerable question, point start and end at [CLS] (position 0), as the original.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from electra_jax.finetune.tasks import TaskError, prepared_builder


@dataclasses.dataclass(frozen=True)
class Question:
    qid: str
    question: str
    context: str
    answers: tuple[str, ...]  # every gold answer text (the metrics take the max over them)
    answer_start: int  # character offset of answers[0] in context; -1: none, or not where the file says
    is_impossible: bool


@dataclasses.dataclass
class QAData:
    """One split as read, and what could not be used (counted, the first few shown)."""

    source: str
    questions: list[Question]
    misaligned: list[str] = dataclasses.field(default_factory=list)

    @property
    def has_unanswerable(self) -> bool:
        return any(q.is_impossible for q in self.questions)


def _need(obj, key: str, kind, where: str, path: str):
    if not isinstance(obj, dict) or key not in obj:
        raise TaskError(f"{path}: {where} has no {key!r} key; expected SQuAD's format "
                        "{data: [{paragraphs: [{context, qas: [{id, question, answers: [{text, answer_start}]}]}]}]}")
    value = obj[key]
    if not isinstance(value, kind):
        raise TaskError(f"{path}: {where}.{key} is a {type(value).__name__}, expected {kind.__name__}")
    return value


def _question(data: QAData, qid: str, question: str, context: str, texts: list[str], starts: list[int],
              impossible: bool) -> Question:
    """A Question; the first answer is trained on when `answer_start` points at its text, else it is
    recorded in data.misaligned (and kept for scoring: the metrics read only the texts)."""
    start = -1
    if texts:
        text, offset = texts[0], starts[0]
        if context[offset:offset + len(text)] == text and text.strip():
            start = offset
        else:
            data.misaligned.append(f"{qid}: answer_start {offset} points at "
                                   f"{context[offset:offset + len(text)]!r}, not {text!r}")
    return Question(qid, question, context, tuple(texts), start, impossible)


def read_squad(path: str, labelled: bool = True) -> QAData:
    """A SQuAD 1.1 or 2.0 JSON file. An answer whose `answer_start` does not point at its text in the
    context is kept for scoring (the metrics read only the texts) but not trained on; an empty context
    is refused. `labelled=False` (predictions): questions without `answers` are read as unanswered."""
    if not os.path.isfile(path):
        raise TaskError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            top = json.load(f)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not JSON ({e}); expected a SQuAD-format file") from None
    articles = _need(top, "data", list, "the top level", path)
    data = QAData(path, [])
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_need(article, "paragraphs", list, f"data[{a}]", path)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _need(paragraph, "context", str, where, path)
            qas = _need(paragraph, "qas", list, where, path)
            if not context.strip():
                raise TaskError(f"{path}: {where} has an empty context (questions "
                                f"{[q.get('id') for q in qas[:3] if isinstance(q, dict)]}); remove it or fill it in")
            for q, qa in enumerate(qas):
                where_q = f"{where}.qas[{q}]"
                qid = str(_need(qa, "id", (str, int), where_q, path))
                question = _need(qa, "question", str, where_q, path)
                if not labelled and "answers" not in qa:
                    data.questions.append(Question(qid, question, context, (), -1, False))
                    continue
                answers = _need(qa, "answers", list, where_q, path)
                texts = [_need(a, "text", str, f"{where_q}.answers[{i}]", path) for i, a in enumerate(answers)]
                starts = [_need(a, "answer_start", int, f"{where_q}.answers[{i}]", path)
                          for i, a in enumerate(answers)]
                impossible = bool(qa.get("is_impossible", False)) or not answers
                data.questions.append(_question(data, qid, question, context, texts, starts, impossible))
    if not data.questions:
        raise TaskError(f"{path}: no questions")
    return data


def read_squad_tfds(name: str, split: str, data_dir: str | None, download: bool) -> QAData:
    """squad/v1.1 or squad/v2.0 through TensorFlow Datasets (prepared under data_dir, or --download)."""
    builder = prepared_builder(name, split, data_dir, download)  # first: it sets TensorFlow up
    import tensorflow_datasets as tfds

    data = QAData(f"tfds {name}:{split}", [])
    for row in tfds.as_numpy(builder.as_dataset(split=split)):
        text = lambda v: v.decode("utf-8")
        texts = [text(t) for t in row["answers"]["text"]]
        data.questions.append(_question(data, text(row["id"]), text(row["question"]), text(row["context"]), texts,
                                        [int(s) for s in row["answers"]["answer_start"]],
                                        bool(row.get("is_impossible", False)) or not texts))
    return data


# ----------------------------------------------------------------------------- windows


@dataclasses.dataclass
class Features:
    """Model inputs of every window (`arrays`) and what decoding needs to map them back."""

    arrays: dict[str, np.ndarray]  # input_ids, input_mask, segment_ids [, start/end_positions, is_impossible]
    question: np.ndarray  # [F] index of each window's question
    offsets: np.ndarray  # [F, S, 2] character span in the context of each context token; -1 elsewhere
    max_context: np.ndarray  # [F, S] bool: this window is the token's best (the original's max context)
    # (offsets and max_context are for decoding: empty for training features)
    counts: dict[str, int]  # truncated questions, answers that could not be aligned to sub-tokens


def _windows(n: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over n context tokens: the original's doc_spans."""
    spans, start = [], 0
    while True:
        length = min(n - start, room)
        spans.append((start, length))
        if start + length >= n:
            return spans
        start += min(length, stride)


def _max_context(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    """[n] the window each context token has its most context in: the original's
    `_check_is_max_context` (the most tokens on its shorter side, + 0.01 x the window's length; ties
    to the first window)."""
    position = np.arange(n)[None]
    start = np.array([s for s, _ in spans])[:, None]
    length = np.array([l for _, l in spans])[:, None]
    inside = (position >= start) & (position < start + length)
    score = np.minimum(position - start, start + length - 1 - position) + 0.01 * length
    return np.argmax(np.where(inside, score, -np.inf), axis=0)


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last context sub-token covering characters [start, end), or None."""
    hits = [t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    return (hits[0], hits[-1]) if hits else None


def featurize(data: QAData, tokenizer, max_len: int, max_query_len: int, doc_stride: int, pad_id: int,
              training: bool) -> Features:
    from electra_jax.data.tokenizer import special_ids

    ids = special_ids(tokenizer, data.source)
    questions = tokenizer.encode_batch([q.question for q in data.questions], add_special_tokens=False)
    contexts = {}  # SQuAD asks several questions of each paragraph: tokenise each once
    for q in data.questions:
        contexts.setdefault(q.context, None)
    encoded = tokenizer.encode_batch(list(contexts), add_special_tokens=False)
    contexts = dict(zip(contexts, encoded))
    rows = {k: [] for k in ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions",
                            "is_impossible")}
    owner, all_offsets, all_max = [], [], []
    counts = {"truncated_questions": 0, "unaligned_answers": 0}
    for index, (q, q_enc) in enumerate(zip(data.questions, questions)):
        q_ids = q_enc.ids
        if len(q_ids) > max_query_len:
            q_ids = q_ids[:max_query_len]
            counts["truncated_questions"] += 1
        context = contexts[q.context]
        span = None
        if training and not q.is_impossible:
            if q.answer_start < 0:
                continue  # misaligned in the file: counted when read
            span = answer_tokens(context.offsets, q.answer_start, q.answer_start + len(q.answers[0]))
            if span is None:
                counts["unaligned_answers"] += 1
                continue
        room = max_len - len(q_ids) - 3
        spans = _windows(len(context.ids), room, doc_stride)
        best_window = _max_context(spans, len(context.ids))
        for i, (start, length) in enumerate(spans):
            tokens = [ids.cls, *q_ids, ids.sep, *context.ids[start:start + length], ids.sep]
            first = len(q_ids) + 2  # where the window's context begins
            s = e = 0
            if span is not None and start <= span[0] and span[1] < start + length:
                s, e = span[0] - start + first, span[1] - start + first
            pad = max_len - len(tokens)
            rows["input_ids"].append(tokens + [pad_id] * pad)
            rows["input_mask"].append([1] * len(tokens) + [0] * pad)
            rows["segment_ids"].append([0] * first + [1] * (length + 1) + [0] * pad)
            rows["start_positions"].append(s)
            rows["end_positions"].append(e)
            rows["is_impossible"].append(float(q.is_impossible))
            owner.append(index)
            if not training:  # what decoding needs (SQuAD's training set would need GBs of it)
                offsets = np.full((max_len, 2), -1, np.int32)
                offsets[first:first + length] = context.offsets[start:start + length]
                max_context = np.zeros(max_len, bool)
                max_context[first:first + length] = best_window[start:start + length] == i
                all_offsets.append(offsets)
                all_max.append(max_context)
    if not owner:
        raise TaskError(f"{data.source}: no usable question (check the answers' answer_start)")
    arrays = {k: np.asarray(v, np.float32 if k == "is_impossible" else np.int32) for k, v in rows.items()}
    if training:
        return Features(arrays, np.asarray(owner), np.zeros((0, max_len, 2), np.int32),
                        np.zeros((0, max_len), bool), counts)
    arrays = {k: arrays[k] for k in ("input_ids", "input_mask", "segment_ids")}
    return Features(arrays, np.asarray(owner), np.stack(all_offsets), np.stack(all_max), counts)


# ----------------------------------------------------------------------------- decoding


def _candidates(out: dict, f: int, n_best: int, answer_mask: np.ndarray):
    """(start, end, score) pairs of window f: the joint head's beam of starts with each start's best ends,
    by log-probability, or ("hf" head) the top n_best starts x ends by logit after the original's mask
    (-1000 outside the context and [CLS], qa_tasks.py), so the n_best are not spent on the question."""
    if "start_top_index" in out:
        for i, start in enumerate(out["start_top_index"][f]):
            for j, end in enumerate(out["end_top_index"][f, i]):
                yield int(start), int(end), float(out["start_top_log_probs"][f, i] + out["end_top_log_probs"][f, i, j])
    else:
        off = 1000.0 * (answer_mask - 1.0)
        start_logits, end_logits = out["start_logits"][f] + off, out["end_logits"][f] + off
        starts = np.argsort(-start_logits, kind="stable")[:n_best]
        ends = np.argsort(-end_logits, kind="stable")[:n_best]
        for start in starts:
            for end in ends:
                yield int(start), int(end), float(start_logits[start] + end_logits[end])


def decode(out: dict, features: Features, data: QAData, n_best: int = 20,
           max_answer_len: int = 30) -> tuple[dict[str, str], dict[str, float]]:
    """Model outputs over every window -> ({qid: best answer text}, {qid: no-answer score}).

    The best span over all windows of a question: start and end inside the context, end >= start, at
    most max_answer_len sub-tokens, the start in its max-context window; its text is the context's
    characters from the start token's first to the end token's last. The no-answer score (SQuAD 2.0:
    predict "" when it is above a threshold) is the joint head's no-answer logit, else the original's
    min over windows of start[CLS] + end[CLS] minus the best span's score; with no valid span, +inf.
    """
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    # Where an answer may start or end, as the model's `answer_mask`: the context with its [SEP], and [CLS].
    answer_mask = (features.arrays["segment_ids"] * features.arrays["input_mask"]).astype(np.float32)
    answer_mask[:, 0] = 1.0
    for f, q_index in enumerate(features.question):
        offsets, max_context = features.offsets[f], features.max_context[f]
        in_context = offsets[:, 0] >= 0
        if "no_answer_logit" in out:
            window_null = float(out["no_answer_logit"][f])
        elif "start_logits" in out and "end_logits" in out:
            window_null = float(out["start_logits"][f, 0] + out["end_logits"][f, 0])
        else:
            window_null = np.inf
        null[q_index] = min(null.get(q_index, np.inf), window_null)
        for start, end, score in _candidates(out, f, n_best, answer_mask[f]):
            if not (in_context[start] and in_context[end] and max_context[start]
                    and start <= end < start + max_answer_len):
                continue
            if q_index not in best or score > best[q_index][0]:
                context = data.questions[q_index].context
                best[q_index] = (score, context[offsets[start, 0]:offsets[end, 1]])
    predictions, no_answer = {}, {}
    for q_index, q in enumerate(data.questions):
        score, text = best.get(q_index, (None, ""))
        predictions[q.qid] = text
        if score is None:
            no_answer[q.qid] = float("inf")
        elif "no_answer_logit" in out:
            no_answer[q.qid] = null.get(q_index, np.inf)
        else:
            no_answer[q.qid] = null.get(q_index, np.inf) - score
    return predictions, no_answer
