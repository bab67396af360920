"""Fine-tuning tasks: what to read (GLUE through TFDS, local CSV/TSV/JSONL tables, CoNLL files), how
it becomes fixed-length arrays, and which metrics score it.

    [CLS] A [SEP] (B [SEP]), truncated longest-first to max_len, as the original's `classification_tasks.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from electra_jax.errors import UserError
from electra_jax.fs import host_tf

KINDS = ("classification", "regression", "tagging", "qa")


class TaskError(UserError, ValueError):
    """Task data that cannot be used; the message names the file, column or label and what to do."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # one of KINDS
    metrics: tuple[str, ...]  # the first picks the best checkpoint
    epochs: int
    text_a: str = "sentence"
    text_b: str | None = None
    label: str = "label"
    tfds: str | None = None
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    symmetric: bool = False  # the label does not depend on the order of the pair (MRPC, STS-B)
    label_scale: float = 1.0  # regression targets x this: STS-B's 0-5 -> 0-1, as the original's (x - 0) / 5
    max_len: int = 128  # the original's max_seq_length: 128, and 512 for question answering
    unanswerable: bool | None = False  # QA: SQuAD 2.0's no-answer questions (None: as the data has them)
    # GLUE's test-set submission: (TFDS dataset, split, the benchmark's file name) per file, and whether
    # the benchmark reads class indices (CoLA, SST-2, MRPC, QQP) rather than label names (NLI tasks).
    submissions: tuple[tuple[str, str, str], ...] = ()
    submit_indices: bool = False


def _glue(name, metrics, a, b=None, epochs=3, kind="classification", eval_splits=("validation",),
          symmetric=False, label_scale=1.0, submissions=None, submit_indices=False):
    return TaskSpec(name, kind, metrics, epochs, a, b, "label", f"glue/{name}", "train", eval_splits,
                    symmetric, label_scale, submissions=submissions, submit_indices=submit_indices)


def _test(name, file):
    return ((f"glue/{name}", "test", file),)


# Epochs as the original's configure_finetuning.py: 3, and 10 for the small RTE and STS-B.
GLUE = {
    "cola": _glue("cola", ("mcc", "accuracy"), "sentence", submissions=_test("cola", "CoLA.tsv"), submit_indices=True),
    "sst2": _glue("sst2", ("accuracy",), "sentence", submissions=_test("sst2", "SST-2.tsv"), submit_indices=True),
    "mrpc": _glue("mrpc", ("accuracy", "f1"), "sentence1", "sentence2", symmetric=True,
                  submissions=_test("mrpc", "MRPC.tsv"), submit_indices=True),
    "stsb": _glue("stsb", ("spearman", "pearson"), "sentence1", "sentence2", 10, "regression", symmetric=True,
                  label_scale=0.2, submissions=_test("stsb", "STS-B.tsv")),
    "qqp": _glue("qqp", ("accuracy", "f1"), "question1", "question2", submissions=_test("qqp", "QQP.tsv"),
                 submit_indices=True),
    # AX, the diagnostic set, is scored with MNLI's model (premise / hypothesis, the same labels).
    "mnli": _glue("mnli", ("accuracy",), "premise", "hypothesis",
                  eval_splits=("validation_matched", "validation_mismatched"),
                  submissions=(("glue/mnli", "test_matched", "MNLI-m.tsv"), ("glue/mnli", "test_mismatched", "MNLI-mm.tsv"),
                               ("glue/ax", "test", "AX.tsv"))),
    "qnli": _glue("qnli", ("accuracy",), "question", "sentence", submissions=_test("qnli", "QNLI.tsv")),
    "rte": _glue("rte", ("accuracy",), "sentence1", "sentence2", 10, submissions=_test("rte", "RTE.tsv")),
}
# Question answering as the original (2 epochs, 512 tokens); SQuAD's official metrics.
QA = {
    "squad1": TaskSpec("squad1", "qa", ("f1", "exact"), 2, tfds="squad/v1.1", max_len=512),
    "squad2": TaskSpec("squad2", "qa", ("f1", "exact"), 2, tfds="squad/v2.0", max_len=512, unanswerable=True),
}
LOCAL = {
    "classification": TaskSpec("classification", "classification", ("accuracy", "f1", "mcc"), 3),
    "regression": TaskSpec("regression", "regression", ("spearman", "pearson"), 3),
    "tagging": TaskSpec("tagging", "tagging", ("entity_f1", "accuracy"), 3, text_a="tokens", label="tags"),
    "qa": TaskSpec("qa", "qa", ("f1", "exact"), 2, max_len=512, unanswerable=None),  # SQuAD-format JSON
}
TASKS = {**GLUE, **QA, **LOCAL}


def task_spec(name: str, text_a: str = "", text_b: str = "", label: str = "") -> TaskSpec:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    spec = TASKS[name]
    if name in LOCAL:  # column names are the user's
        spec = dataclasses.replace(spec, text_a=text_a or spec.text_a, text_b=text_b or None,
                                   label=label or spec.label)
    return spec


@dataclasses.dataclass
class Examples:
    """One split as read: texts (or word lists for tagging) and raw labels (str, float or tag lists)."""

    source: str
    text_a: list
    text_b: list | None
    labels: list


def with_swapped_pairs(examples: Examples) -> Examples:
    """Every pair again with its two texts swapped, after the originals: the original's
    `double_unordered` for MRPC and STS-B training data."""
    return Examples(f"{examples.source} (+ swapped pairs)", examples.text_a + examples.text_b,
                    examples.text_b + examples.text_a, examples.labels + examples.labels)


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Table:
    """A table's rows as dicts, with the line each row starts on, and the rows that could not be read
    as rows (file line, what is wrong), each a TaskError unless bad rows are skipped."""

    rows: list[dict]
    lines: list[int]
    columns: list[str]
    bad: list[tuple[int, str]]
    # Rows with quoted line breaks (legal CSV): their start line -> the inner lines that read as rows
    # of their own, which `read_table` judges by their labels.
    swallowed: dict[int, list[dict]] = dataclasses.field(default_factory=dict)


def _csv_table(f, delimiter: str) -> Table:
    """Strict CSV/TSV: every row has the header's number of fields, quotes are closed; a quoted field
    whose inner lines would each be a row of their own is an unclosed quote that swallowed them."""
    reader = csv.reader(f, delimiter=delimiter, strict=True)
    try:
        columns = next(reader)
    except StopIteration:
        return Table([], [], [], [])
    except csv.Error as e:
        return Table([], [], [], [(1, f"the header is malformed ({e})")])
    table = Table([], [], columns, [])
    kind, separator = ("TSV", "tab") if delimiter == "\t" else ("CSV", "comma")
    end = reader.line_num
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = reader.line_num
            table.bad.append((start, f"malformed {kind} through line {end} "
                                     f"({e}; an unclosed quote?)"))
            continue
        end = reader.line_num
        if not fields:  # a blank line
            continue
        if len(fields) != len(columns):
            table.bad.append((start, f"{len(fields)} fields, the header has {len(columns)} (an unquoted "
                                     f"{separator} in the text? quote the field)"))
            continue
        if end > start:  # quoted line breaks: legal, or an unclosed quote that swallowed rows
            inner = [line for field in fields for line in field.split("\n")[1:-1]]
            parsed = (next(csv.reader([line], delimiter=delimiter), []) for line in inner)
            table.swallowed[start] = [dict(zip(columns, p)) for p in parsed if len(p) == len(columns)]
        table.rows.append(dict(zip(columns, fields)))
        table.lines.append(start)
    return table


def _jsonl_table(f) -> Table:
    table = Table([], [], [], [])
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            table.bad.append((n, f"not JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(row, dict):
            table.bad.append((n, f"a JSON {type(row).__name__}, not an object of columns"))
            continue
        table.rows.append(row)
        table.lines.append(n)
    table.columns = sorted({k for r in table.rows for k in r})
    return table


def _table(path: str) -> Table:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".json", ".csv", ".tsv"):
        raise TaskError(f"{path}: unknown table format {ext!r}; use .csv, .tsv or .jsonl")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return _jsonl_table(f) if ext in (".jsonl", ".json") else _csv_table(f, "\t" if ext == ".tsv" else ",")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


# A class with one row in a table of at least this many, where classes of 10 or more rows hold 95%
# of the rows, is a malformed row's stray text far more often than a real class.
RARE_LABEL_MIN_ROWS = 200


def _suspicious_labels(labels: list[str]) -> set[str]:
    import collections

    counts = collections.Counter(labels)
    if len(labels) < RARE_LABEL_MIN_ROWS:
        return {v for v in counts if '"' in v or "\n" in v}
    common = sum(c for c in counts.values() if c >= 10)
    rare = {v for v, c in counts.items() if c == 1} if common >= 0.95 * len(labels) else set()
    return rare | {v for v in counts if '"' in v or "\n" in v}


def read_table(path: str, spec: TaskSpec, skip_bad_rows: bool = False, log=print,
               label_optional: bool = False) -> Examples:
    """A CSV/TSV/JSONL file with the spec's text_a, optional text_b and label columns, read strictly:
    a malformed row, a row with the wrong number of fields, a missing label or a label that looks like
    a broken row's text is refused naming file and line, or with `skip_bad_rows` skipped and counted.
    `label_optional` (predictions): a file without the label column is read with labels None."""
    if not os.path.isfile(path):
        raise TaskError(f"{path}: no such file")
    table = _table(path)
    columns = table.columns
    if label_optional and not table.rows and not table.bad:
        raise TaskError(f"{path}: no rows")
    if label_optional and spec.label not in columns:
        spec = dataclasses.replace(spec, label="")
    for column in (spec.text_a, spec.text_b, spec.label):
        if column and column not in columns:
            raise TaskError(f"{path}: no column {column!r}; the columns are {columns} (choose them with "
                            "--config.task.text_a / text_b / label)")
    if not spec.label:  # unlabelled rows to predict: the texts, strictly
        bad = list(table.bad) + [(line, f"no {c!r} value") for row, line in zip(table.rows, table.lines)
                                 for c in (spec.text_a, spec.text_b) if c and row.get(c) is None]
        if bad:
            raise TaskError(f"{path}: {len(bad)} bad row(s) (" + "; ".join(f"line {n}: {w}" for n, w in sorted(bad)[:3]) + ")")
        return Examples(path, [str(r[spec.text_a]) for r in table.rows],
                        [str(r[spec.text_b]) for r in table.rows] if spec.text_b else None, [None] * len(table.rows))
    bad = list(table.bad)
    keep = []
    for row, line in zip(table.rows, table.lines):
        value = row.get(spec.label)
        missing = [c for c in (spec.text_a, spec.text_b) if c and row.get(c) is None]
        if missing:
            bad.append((line, f"no {missing[0]!r} value"))
        elif value is None or str(value).strip() == "":
            bad.append((line, f"no {spec.label!r} label"))
        elif spec.kind == "regression" and not _is_number(str(value)):
            bad.append((line, f"label {value!r} is not a number"))
        else:
            keep.append((row, line))
    known = {str(r[spec.label]).strip() for r, _ in keep}
    looks_like_a_row = lambda r: (_is_number(str(r.get(spec.label))) if spec.kind == "regression"
                                  else str(r.get(spec.label)).strip() in known)
    inside = {line: sum(map(looks_like_a_row, table.swallowed.get(line, []))) for _, line in keep}
    bad += [(line, f"a quoted field holds {inside[line]} line(s) that read as rows of their own (an unclosed "
                   "quote?)") for _, line in keep if inside[line]]
    keep = [(r, line) for r, line in keep if not inside[line]]
    if spec.kind == "classification":
        odd = _suspicious_labels([str(r[spec.label]).strip() for r, _ in keep])
        bad += [(line, f"label {str(r[spec.label]).strip()[:60]!r} appears once in {len(keep):,} rows (or looks "
                       "like text), where the other classes are few: a malformed row?")
                for r, line in keep if str(r[spec.label]).strip() in odd]
        keep = [(r, line) for r, line in keep if str(r[spec.label]).strip() not in odd]
    bad.sort()
    if bad and not skip_bad_rows:
        shown = "; ".join(f"line {n}: {what}" for n, what in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise TaskError(f"{path}: {len(bad)} bad row(s) ({shown}{more}); fix the file, or pass "
                        "--config.task.skip_bad_rows=True to skip them (counted and shown)")
    if bad:
        log(f"{path}: skipped {len(bad)} bad row(s) of {len(bad) + len(keep)}: " +
            "; ".join(f"line {n}: {what}" for n, what in bad[:3]) + (" ..." if len(bad) > 3 else ""))
    multiline = sum(1 for _, line in keep if line in table.swallowed)
    if multiline:
        log(f"{path}: {multiline} row(s) hold quoted line breaks (read as one row each)")
    rows = [r for r, _ in keep]
    labels = [str(r[spec.label]).strip() if spec.kind == "classification" else
              float(r[spec.label]) if spec.kind == "regression" else r[spec.label] for r in rows]
    return Examples(path, [str(r[spec.text_a]) for r in rows],
                    [str(r[spec.text_b]) for r in rows] if spec.text_b else None, labels)


def read_conll(path: str, tags_optional: bool = False) -> Examples:
    """CoNLL: one `token ... tag` per line (tag last), blank lines between sentences. `tags_optional`
    (predictions): a file of one token per line is read with tags None."""
    if not os.path.isfile(path):
        raise TaskError(f"{path}: no such file")
    sentences, tags, words, word_tags = [], [], [], []
    tagged = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tags.append(word_tags if tagged else None)
                words, word_tags = [], []
                continue
            if tagged is None:
                tagged = len(parts) >= 2 or not tags_optional
            if len(parts) < 2 and tagged or (len(parts) != 1 and not tagged):
                expected = "`token ... tag`" if tagged else "one token (as the file's first line)"
                raise TaskError(f"{path}:{n}: expected {expected}, got {line.strip()!r}")
            words.append(parts[0])
            word_tags.append(parts[-1])
    if words:
        sentences.append(words)
        tags.append(word_tags if tagged else None)
    if not sentences:
        raise TaskError(f"{path}: no sentences")
    return Examples(path, sentences, None, tags)


def prepared_builder(name: str, split: str, data_dir: str | None, download: bool = False):
    """A TFDS builder prepared under data_dir, or downloaded when allowed (offline, tfds would retry
    its download for minutes; we refuse at once instead)."""
    host_tf()  # first: it imports TensorFlow quietly and keeps it off the accelerators
    import tensorflow_datasets as tfds

    source = f"tfds {name}:{split}"
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise TaskError(f"{source} is not prepared under {data_dir or '~/tensorflow_datasets'}; pass "
                            "--download on a machine with network (or prepare it there and copy it)")
        try:
            builder.download_and_prepare()
        except Exception as e:  # tfds raises many kinds; all mean the same thing to the user
            raise TaskError(f"{source}: download failed ({type(e).__name__}: {str(e)[:200]})") from None
    return builder


def read_tfds(spec: TaskSpec, split: str, data_dir: str | None, download: bool = False) -> Examples:
    """A GLUE split through TensorFlow Datasets."""
    builder = prepared_builder(spec.tfds, split, data_dir, download)
    import tensorflow_datasets as tfds

    source = f"tfds {spec.tfds}:{split}"
    label = builder.info.features[spec.label]
    names = getattr(label, "names", None)
    a, b, labels = [], [] if spec.text_b else None, []
    for row in tfds.as_numpy(builder.as_dataset(split=split)):
        a.append(row[spec.text_a].decode("utf-8"))
        if spec.text_b:
            b.append(row[spec.text_b].decode("utf-8"))
        value = row[spec.label]
        labels.append(float(value) * spec.label_scale if spec.kind == "regression" else names[int(value)])
    return Examples(source, a, b, labels)


def read_tfds_test(spec: TaskSpec, dataset: str, split: str, data_dir: str | None,
                   download: bool = False) -> tuple[Examples, list[int], list[str]]:
    """(unlabelled examples, their `idx`, the dataset's class names) of a GLUE test split, in idx order
    (the test labels are hidden: -1)."""
    builder = prepared_builder(dataset, split, data_dir, download)
    import tensorflow_datasets as tfds

    rows = sorted(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)), key=lambda r: int(r["idx"]))
    text = lambda row, key: row[key].decode("utf-8")
    examples = Examples(f"tfds {dataset}:{split}", [text(r, spec.text_a) for r in rows],
                        [text(r, spec.text_b) for r in rows] if spec.text_b else None, [None] * len(rows))
    return examples, [int(r["idx"]) for r in rows], list(getattr(builder.info.features["label"], "names", []) or [])


def label_names(train: Examples, spec: TaskSpec) -> list[str]:
    """Classes in a fixed order: sorted by their text (numbers numerically), from the training split."""
    if spec.kind == "regression":
        return []
    values = {t for tags in train.labels for t in tags} if spec.kind == "tagging" else set(train.labels)
    if spec.kind == "tagging" and "O" in values:
        values.discard("O")
        return ["O", *sorted(values)]
    return sorted(values, key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v))


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- encoding


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """The original's `_truncate_seq_pair`: drop the last token of the longer side until both fit, B on
    ties. (The tokenizers library's longest_first drops from A on ties: [CLS] 5 + 5 [SEP]s at 10 keeps
    3 + 4 tokens there, 4 + 3 here.)"""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def _encode_pairs(examples: Examples, tok, max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP], each side tokenised alone and truncated as the original, then padded."""
    from electra_jax.data.tokenizer import special_ids

    ids = special_ids(tok, examples.source)
    firsts = tok.encode_batch(examples.text_a, add_special_tokens=False)
    seconds = tok.encode_batch(examples.text_b, add_special_tokens=False)
    out = {k: np.zeros((len(firsts), max_len), np.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    for i, (first, second) in enumerate(zip(firsts, seconds)):
        a, b = truncate_pair(first.ids, second.ids, max_len - 3)
        row = [ids.cls, *a, ids.sep, *b, ids.sep]
        out["input_ids"][i, :len(row)] = row
        out["input_ids"][i, len(row):] = pad_id
        out["input_mask"][i, :len(row)] = 1
        out["segment_ids"][i, len(a) + 2:len(row)] = 1
    return out


def encode(examples: Examples, spec: TaskSpec, tokenizer, max_len: int, labels: list[str],
           pad_id: int) -> dict[str, np.ndarray]:
    """Fixed-length int32 arrays {input_ids, input_mask, segment_ids, labels[, label_weights]}.

    Tagging labels the first sub-token of each word (the others get weight 0); classification and
    tagging labels unseen in training stop here, naming the label and the file.
    """
    if not examples.text_a:
        raise TaskError(f"{examples.source}: no examples")
    tok = tokenizer
    if examples.text_b is not None:
        out = _encode_pairs(examples, tok, max_len, pad_id)
    else:
        tok.enable_truncation(max_len)
        tok.enable_padding(length=max_len, pad_id=pad_id, pad_token="[PAD]")
        encodings = tok.encode_batch(examples.text_a, is_pretokenized=spec.kind == "tagging")
        tok.no_truncation()
        tok.no_padding()
        out = {"input_ids": np.asarray([e.ids for e in encodings], np.int32),
               "input_mask": np.asarray([e.attention_mask for e in encodings], np.int32),
               "segment_ids": np.asarray([e.type_ids for e in encodings], np.int32)}
    index = {name: i for i, name in enumerate(labels)}

    def label_id(value, i):
        if value not in index:
            raise TaskError(f"{examples.source}: example {i + 1} has label {value!r}, which the training "
                            f"data does not have (known: {labels[:20]})")
        return index[value]

    if spec.kind == "regression":
        out["labels"] = np.asarray(examples.labels, np.float32)
    elif spec.kind == "classification":
        out["labels"] = np.asarray([label_id(v, i) for i, v in enumerate(examples.labels)], np.int32)
    else:
        tags = np.zeros_like(out["input_ids"])
        weights = np.zeros(out["input_ids"].shape, np.float32)
        for i, (enc, word_tags) in enumerate(zip(encodings, examples.labels)):
            previous = None
            for t, word in enumerate(enc.word_ids):
                if word is not None and word != previous:  # the word's first sub-token
                    tags[i, t], weights[i, t] = label_id(word_tags[word], i), 1.0
                previous = word
        out["labels"], out["label_weights"] = tags, weights
    return out
