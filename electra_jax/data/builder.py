"""`electra-jax build-data`: text -> packed ELECTRA pretraining examples in TFRecord shards.

The packing follows google-research/electra `build_pretraining_dataset.py`'s ExampleBuilder: non-empty
lines are units, blank lines and file ends close a document, units accumulate to the target length,
then split into segments A and B (single segment with p=0.1; the next target is randint(5, max) with
p=0.05). `--packing original` then truncates to fit `[CLS] A [SEP] B [SEP]`, as the original does,
dropping the rest; the default `fill` takes exactly what fits and carries the rest of the unit into
the next example, so every token is kept (see FillBuilder). Documented differences from the original:

- Randomness is per block of documents (seeded from (seed, block index)), not per job, so the output
  does not depend on the worker count. Blank lines inside an empty chunk draw nothing (the original
  appends empty sentences that can consume random numbers).
- Literal "[SEP]"/"[MASK]" text is tokenised as text, never as the special token.
- The examples are shuffled over the whole build (random buckets on disk, each permuted in memory),
  where the original writes each job's input files to its own output files in order.

Each example is one TFRecord of raw little-endian values (uint16 when the vocabulary fits, else
int32): the padded ids, the real length and the index of the first [SEP] (`record_dtype`); the reader
rebuilds input_mask and segment_ids. `manifest.json` is written last (atomically), so a build without it is
incomplete and the reader refuses it."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import glob as globlib
import gzip
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from electra_jax.errors import UserError
from electra_jax.fs import exists, host_tf, is_remote, read_text, writable_dir

FORMAT = "electra-jax-pretraining/2"  # 1: tf.train.Example records, unshuffled, truncating packing
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"  # a copy of the tokenizer the examples were made with
BLOCK_CHARS = 1 << 20  # documents are handed to workers in blocks of about this many characters
# A document longer than this (a whole book or dump with no blank line) is cut here, so memory stays
# bounded; each cut costs at most one short example.
MAX_DOCUMENT_CHARS = 8 * BLOCK_CHARS


class DataError(UserError, ValueError):
    """Bad input to the builder or reader; the message names the file and what to do."""


# ----------------------------------------------------------------------------- the packing algorithm


class ExampleBuilder:
    """google-research/electra's packing, exactly: accumulate the tokenised lines of a document to the
    target length, then cut them into (A, B) and truncate to fit; what is cut is lost (`dropped`)."""

    def __init__(self, max_length: int, rng: random.Random):
        self.max_length = max_length
        self.target_length = max_length
        self.rng = rng
        self.sentences: list[list[int]] = []
        self.length = 0
        self.dropped = 0  # tokens cut by truncation

    def add_line(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        """Add one non-empty line; returns the (A, B) pairs it completes (none or one)."""
        self.sentences.append(ids)
        self.length += len(ids)
        return [self._create()] if self.length >= self.target_length else []

    def end_document(self) -> list[tuple[list[int], list[int]]]:
        return [self._create()] if self.length else []

    def _create(self):
        if self.rng.random() < 0.1:
            first_target = 100000  # a single segment, as in classification tasks
        else:
            first_target = (self.target_length - 3) // 2  # room for [CLS] and two [SEP]
        first, second = _assign(self.sentences, first_target, self.rng)
        first = first[: self.max_length - 2]
        second = second[: max(0, self.max_length - len(first) - 3)]
        self.dropped += self.length - len(first) - len(second)
        self.sentences, self.length = [], 0
        self._next_target()
        return first, second

    def _next_target(self):
        if self.rng.random() < 0.05:
            self.target_length = self.rng.randint(5, self.max_length)
        else:
            self.target_length = self.max_length


def _assign(units: list[list[int]], first_target: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """The original's A/B rule: units go to A until it reaches first_target (a unit that would
    overflow it goes to A on a coin flip while B is empty), the rest to B, in order."""
    first: list[int] = []
    second: list[int] = []
    for unit in units:
        if (not first or len(first) + len(unit) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)):
            first += unit
        else:
            second += unit
    return first, second


class FillBuilder(ExampleBuilder):
    """The default packing: the original's draws and A/B rule, but nothing is cut away. Each example
    is filled to its target (all of `[CLS] A [SEP] B [SEP]`, or the document's end); a unit that does
    not fit continues into the next example. When the units give B nothing, A is cut at the A/B
    target, so a corpus of one long document per line still trains the B segment as the original's
    sentence-per-line input does (there every unit is short)."""

    def add_line(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        self.sentences.append(ids)
        self.length += len(ids)
        out = []
        while self.length >= self.target_length - 2:  # enough for a full single-segment example
            out.append(self._create())
        return out

    def end_document(self) -> list[tuple[list[int], list[int]]]:
        out = []
        while self.length:
            out.append(self._create())
        return out

    def _create(self):
        single = self.rng.random() < 0.1
        budget = self.target_length - (2 if single else 3)
        first_target = 100000 if single else (self.target_length - 3) // 2
        taken, left = [], budget
        while self.sentences and left > 0:
            unit = self.sentences[0]
            if len(unit) <= left:
                taken.append(self.sentences.pop(0))
            else:  # the rest of the unit starts the next example
                taken.append(unit[:left])
                self.sentences[0] = unit[left:]
            left -= len(taken[-1])
        self.length -= budget - left
        first, second = _assign(taken, first_target, self.rng)
        if not single and not second and len(first) > first_target:
            first, second = first[:first_target], first[first_target:]
        self._next_target()
        return first, second


PACKINGS = {"fill": FillBuilder, "original": ExampleBuilder}


def layout(first: Sequence[int], second: Sequence[int], cls_id: int, sep_id: int, pad_id: int,
           seq_len: int) -> tuple[np.ndarray, int, int]:
    """`[CLS] A [SEP] (B [SEP])` padded: (ids[seq_len], number of real tokens, index of the first [SEP])."""
    ids = [cls_id, *first, sep_id]
    first_sep = len(ids) - 1
    if second:
        ids += [*second, sep_id]
    row = np.full(seq_len, pad_id, np.int64)
    row[: len(ids)] = ids
    return row, len(ids), first_sep


# ----------------------------------------------------------------------------- reading text


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files from paths, globs and directories (a directory: every file under it, hidden ones left out,
    in sorted path order, as the original's builder reads a corpus directory)."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(_glob(pattern))
        if not matches:
            raise DataError(f"no files match {pattern!r}; check the path or quote the glob")
        for match in matches:
            files += sorted(_files_under(match)) if _isdir(match) else [match]
    if not files:
        raise DataError(f"{', '.join(patterns)}: no files in {'this directory' if len(patterns) == 1 else 'these'}")
    return files


def _files_under(directory: str) -> list[str]:
    walk = host_tf().io.gfile.walk if is_remote(directory) else os.walk
    files = []
    for root, _, names in walk(directory):
        if any(part.startswith(".") for part in os.path.relpath(root, directory).split(os.sep) if part != "."):
            continue  # hidden directories (.git, ...) are not corpus
        files += [os.path.join(root, name) for name in names if not name.startswith(".")]
    return files


def _glob(pattern):
    if is_remote(pattern):
        return host_tf().io.gfile.glob(pattern)
    return globlib.glob(pattern, recursive=True)


def _isdir(path):
    return host_tf().io.gfile.isdir(path) if is_remote(path) else os.path.isdir(path)


def _open_raw(path: str):
    return host_tf().io.gfile.GFile(path, "rb") if is_remote(path) else open(path, "rb")


def _open_bytes(path: str):
    f = _open_raw(path)
    return gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


def _size(path: str) -> int:
    return host_tf().io.gfile.stat(path).length if is_remote(path) else os.path.getsize(path)


@dataclasses.dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    documents: int = 0
    invalid_utf8_lines: int = 0
    split_long_lines: int = 0
    invalid_utf8_files: list = dataclasses.field(default_factory=list)
    bytes_read: int = 0  # of the input files as stored (compressed, for .gz): for progress


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


def iter_file_documents(files: Sequence[str], stats: ReadStats, max_line_chars: int,
                        text_key: str = "text") -> Iterator[list[str]]:
    """Documents (lists of non-empty, stripped lines) from text files (a blank line ends a document)
    and JSON-lines files (one document per row, its `text_key` field); refuses binary files."""
    for path in files:
        stats.files += 1
        refuse_binary(path)
        done = stats.bytes_read
        raw = _open_raw(path)
        with raw, (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", errors="replace")
            if path.endswith(JSONL_SUFFIXES):
                docs = _jsonl_documents(path, text, text_key, stats, max_line_chars)
            else:
                docs = _text_documents(path, text, stats, max_line_chars)
            for doc in docs:  # streamed: a corpus file may be far larger than memory
                stats.bytes_read = done + raw.tell()
                yield doc
        stats.bytes_read = done + _size(path)


def _text_documents(path, text, stats, max_line_chars):
    bad, chars = 0, 0
    doc: list[str] = []
    for raw in text:
        line = raw.strip()
        if not line or chars > MAX_DOCUMENT_CHARS:
            if doc:
                stats.documents += 1
                yield doc
                doc, chars = [], 0
            if not line:
                continue
        stats.lines += 1
        if "\ufffd" in line:
            bad += 1
        doc += _split_long(line, max_line_chars, stats)
        chars += len(line)
    if doc:
        stats.documents += 1
        yield doc
    if bad:
        stats.invalid_utf8_lines += bad
        stats.invalid_utf8_files.append(path)


def _jsonl_documents(path, text, text_key, stats, max_line_chars):
    """One document per row; a row that is not a JSON object with a string `text_key` stops the build
    (a malformed row is never read as text)."""
    for number, row in enumerate(text, 1):
        if not row.strip():
            continue
        try:
            record = json.loads(row)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not a JSON object ({e.msg}); a JSON-lines input holds one "
                            f"object per line, its text in {text_key!r}") from None
        value = record.get(text_key) if isinstance(record, dict) else None
        if not isinstance(value, str):
            have = sorted(record)[:10] if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{number}: no string field {text_key!r} (the row has {have}); "
                            "pass --text-key with the field that holds the text")
        if "\ufffd" in value:
            stats.invalid_utf8_lines += 1
            if path not in stats.invalid_utf8_files:
                stats.invalid_utf8_files.append(path)
        doc = [piece for line in value.splitlines() if line.strip()
               for piece in _split_long(line.strip(), max_line_chars, stats)]
        stats.lines += len(doc)
        if doc:
            stats.documents += 1
            yield doc


def refuse_binary(path: str) -> None:
    with _open_bytes(path) as f:
        if b"\x00" in f.read(8192):
            raise DataError(f"{path}: looks binary (it contains NUL bytes); pass UTF-8 text files")


def _split_long(line: str, max_chars: int, stats: ReadStats) -> list[str]:
    """A line over max_chars becomes whitespace-bounded pieces (each its own unit), not one huge unit."""
    if len(line) <= max_chars:
        return [line]
    stats.split_long_lines += 1
    pieces, start = [], 0
    while start < len(line):
        end = min(len(line), start + max_chars)
        if end < len(line):
            space = line.rfind(" ", start, end)
            end = space if space > start else end
        pieces.append(line[start:end].strip())
        start = end
    return [p for p in pieces if p]


def iter_tfds_documents(name: str, text_key: str, data_dir: str | None,
                        stats: ReadStats) -> Iterator[list[str]]:
    """Documents from a TFDS dataset `NAME[:SPLIT]`: each example's text, split into lines."""
    host_tf()  # first: it imports TensorFlow quietly and keeps it off the accelerators
    import tensorflow_datasets as tfds

    dataset, _, split = name.partition(":")
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split or "train", shuffle_files=False)
    for example in ds.as_numpy_iterator():
        if text_key not in example:
            raise DataError(f"TFDS {name}: examples have no {text_key!r} feature; "
                            f"pass --text-key with one of {sorted(example)}")
        text = example[text_key]
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        stats.files += 1
        doc = [line.strip() for line in text.splitlines() if line.strip()]
        stats.lines += len(doc)
        if doc:
            stats.documents += 1
            yield doc


def blocks_of(documents: Iterator[list[str]], block_chars: int = BLOCK_CHARS) -> Iterator[list[list[str]]]:
    block, size = [], 0
    for doc in documents:
        block.append(doc)
        size += sum(len(line) for line in doc)
        if size >= block_chars:
            yield block
            block, size = [], 0
    if block:
        yield block


# ----------------------------------------------------------------------------- workers


@dataclasses.dataclass(frozen=True)
class PackSpec:
    tokenizer_json: str
    seed: int
    seq_len: int
    eval_fraction: float
    cls_id: int
    sep_id: int
    pad_id: int
    id_dtype: str
    packing: str = "fill"
    sentence_end_ids: tuple[int, ...] = ()  # fill: units are cut after these tokens (".", "!", "?")


_WORKER: dict = {}


def _init_worker(spec: PackSpec, single_threaded: bool = False) -> None:
    if single_threaded:
        os.environ["RAYON_NUM_THREADS"] = "1"  # one tokenizer thread per worker: the workers are the parallelism
    import tokenizers

    from electra_jax.data.tokenizer import untruncated

    tok = untruncated(tokenizers.Tokenizer.from_str(spec.tokenizer_json))
    tok.encode_special_tokens = True  # "[SEP]" in the text is text
    _WORKER.update(spec=spec, tok=tok)


def sentences(ids: list[int], ends: tuple[int, ...]) -> list[list[int]]:
    """A tokenised line cut after each sentence-ending token: where an A/B boundary may fall. Cut in
    the token domain, so the tokens are exactly the line's, whatever the tokenizer."""
    if not ends or len(ids) < 2:
        return [ids]
    cuts = [i + 1 for i, t in enumerate(ids[:-1]) if t in ends]
    if not cuts:
        return [ids]
    return [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]


def pack_block(task: tuple[int, list[list[str]]]) -> dict:
    """Tokenise and pack one block of documents: {'train'|'eval': (ids, lengths, first_sep)} and the
    token counts (read, in examples, dropped)."""
    index, docs = task
    spec: PackSpec = _WORKER["spec"]
    lines = [line for doc in docs for line in doc]
    tok = _WORKER["tok"]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast skips offsets (tokenizers>=0.21)
    encoded = encode(lines, add_special_tokens=False)
    rng = random.Random(spec.seed * 1_000_003 + index)
    split_rng = random.Random(-(spec.seed * 1_000_003 + index) - 1)
    make = PACKINGS[spec.packing]
    builders = {"train": make(spec.seq_len, rng), "eval": make(spec.seq_len, rng)}
    ends = frozenset(spec.sentence_end_ids) if spec.packing == "fill" else frozenset()
    rows: dict[str, list] = {"train": [], "eval": []}
    input_tokens = 0
    i = 0
    for doc in docs:
        split = "eval" if spec.eval_fraction and split_rng.random() < spec.eval_fraction else "train"
        builder = builders[split]
        for _ in doc:
            ids = encoded[i].ids
            i += 1
            input_tokens += len(ids)
            if not ids:
                continue
            for unit in sentences(ids, ends):
                for example in builder.add_line(unit):
                    rows[split].append(layout(*example, spec.cls_id, spec.sep_id, spec.pad_id, spec.seq_len))
        for example in builder.end_document():
            rows[split].append(layout(*example, spec.cls_id, spec.sep_id, spec.pad_id, spec.seq_len))
    out = {"input_tokens": input_tokens, "dropped_tokens": sum(b.dropped for b in builders.values())}
    for split, items in rows.items():
        if items:
            ids = np.stack([r[0] for r in items]).astype(spec.id_dtype)
            out[split] = (ids, np.array([r[1] for r in items]), np.array([r[2] for r in items]))
    return out


# ----------------------------------------------------------------------------- writing


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def read_manifest(data_dir: str) -> dict | None:
    path = os.path.join(data_dir, MANIFEST)
    return json.loads(read_text(path)) if exists(path) else None


@dataclasses.dataclass
class BuildArgs:
    tokenizer: str
    out: str
    inputs: Sequence[str] = ()
    tfds: str | None = None
    text_key: str = "text"
    tfds_data_dir: str | None = None
    seq_len: int = 128
    max_positions: int = 512
    workers: int = 1
    shards: int = 16
    eval_fraction: float = 0.0
    seed: int = 0
    overwrite: bool = False
    max_line_chars: int = 100_000
    packing: str = "fill"
    progress: bool = True

    def identity(self) -> dict:
        """What makes two builds the same build (not workers, progress or overwrite)."""
        keep = ("tokenizer", "inputs", "tfds", "text_key", "seq_len", "shards", "eval_fraction",
                "seed", "max_line_chars", "packing")
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in dataclasses.asdict(self).items() if k in keep}


def _check_args(a: BuildArgs) -> None:
    if bool(a.inputs) == bool(a.tfds):
        raise DataError("pass either --input GLOB... or --tfds NAME[:SPLIT], not both or neither")
    if not 8 <= a.seq_len <= a.max_positions:
        raise DataError(f"--seq-len {a.seq_len} must be in [8, {a.max_positions}] (the model's max "
                        "positions; raise --max-positions if your model has more)")
    if not 0 <= a.eval_fraction < 1:
        raise DataError(f"--eval-fraction {a.eval_fraction} must be in [0, 1)")
    if a.shards < 1 or a.workers < 1:
        raise DataError("--shards and --workers must be at least 1")
    if a.packing not in PACKINGS:
        raise DataError(f"--packing {a.packing!r}: choose one of {', '.join(PACKINGS)}")
    writable_dir(a.out, "--out", keep=False)  # a file, read-only, a bucket without access: now, not after tokenising


SCRATCH = ".build-data-tmp"  # examples before the shuffle, inside a local --out (removed at the end)


def _ours(name: str) -> bool:
    """A file an interrupted build of ours can leave behind."""
    return name.rstrip("/") in (SCRATCH, TOKENIZER_FILE) or name.endswith(".tfrecord") or name.startswith(MANIFEST)


def _sources(files: list[str], tokenizer_fingerprint: str) -> dict:
    """What a build is made from, beyond its arguments: the tokenizer by content, each input file by
    size and modification time (hashing a corpus of tens of GB on every rerun would cost minutes), so a
    retrained tokenizer or an edited file at the same path is a different build."""
    def stamp(path):
        if is_remote(path):
            st = host_tf().io.gfile.stat(path)
            return [path, st.length, st.mtime_nsec]
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]

    return {"tokenizer_fingerprint": tokenizer_fingerprint, "files": [stamp(f) for f in files]}


def _prepare_out(a: BuildArgs, sources: dict) -> bool:
    """False if `out` already holds this exact build (the same arguments and sources). Refuses a
    different build unless --overwrite; clears what an interrupted build of ours left (a killed build
    never needs --overwrite to rerun)."""
    tf = host_tf()

    gfile = tf.io.gfile
    manifest = read_manifest(a.out)
    existing = gfile.listdir(a.out) if gfile.isdir(a.out) else []
    same = manifest is not None and manifest.get("args") == a.identity() and manifest.get("sources") == sources
    if same and not a.overwrite:
        return False
    leftovers = manifest is None and existing and all(_ours(n) for n in existing)
    if existing and not a.overwrite and not leftovers:
        what = "a different build" if manifest else "files that are not a build of ours"
        raise DataError(f"{a.out} already holds {what}; choose another --out or pass --overwrite")
    if leftovers:
        print(f"{a.out}: removing what an interrupted build left ({len(existing)} files)")
    gfile.makedirs(a.out)
    if manifest is not None:  # first, so a crash below never leaves a complete-looking mix
        gfile.remove(os.path.join(a.out, MANIFEST))
    for name in existing:
        path = os.path.join(a.out, name.rstrip("/"))
        if name.rstrip("/") == SCRATCH and gfile.exists(path):
            gfile.rmtree(path)
        elif (name.endswith(".tfrecord") or name.startswith(MANIFEST)) and gfile.exists(path):
            gfile.remove(path)
    return True


# Shuffle: examples go to buckets drawn at random, then each bucket is permuted in memory and dealt
# over the shards, so every shard's every prefix is a uniform sample of the whole corpus. A bucket
# is about this many bytes, so the memory held stays flat however big the corpus.
BUCKET_BYTES = 128 << 20
MAX_BUCKETS = 512  # open files; past ~60 GB of examples the buckets grow instead


def record_dtype(id_dtype: str, seq_len: int) -> np.dtype:
    """One example as stored, in a bucket and as a TFRecord's payload: the padded ids, then the number
    of real tokens and the index of the first [SEP], all little-endian in the ids' type. Fixed-size
    raw bytes: no per-example protobuf to build (the writer's cost was that) or parse (the reader's);
    TFRecord's framing still checks every record's CRC."""
    dt = np.dtype(id_dtype).newbyteorder("<")
    return np.dtype([("ids", dt, (seq_len,)), ("length", dt), ("first_sep", dt)])


def _bucket_count(input_bytes: int, record: np.dtype, seq_len: int, fraction: float) -> int:
    """Buckets for `fraction` of a corpus of `input_bytes`: ~3 bytes of text per token (English
    WordPiece takes ~4; fewer buckets if the guess is high), full examples."""
    examples = fraction * input_bytes / 3 / (seq_len - 3)
    return int(min(MAX_BUCKETS, max(1, np.ceil(examples * record.itemsize / BUCKET_BYTES))))


def _input_bytes(a: BuildArgs, files: list[str]) -> int:
    if files:
        return sum(_size(f) * (4 if f.endswith(".gz") else 1) for f in files)
    return 8 << 30  # TFDS: sized by its info only after preparing; 8 GiB -> 43 buckets (uint16, seq 128)


class _Progress:
    """A bar on a terminal; in a log, a plain line every `every` seconds (a bar's redraws are one line)."""

    def __init__(self, enabled: bool, what: str, total: int, unit: str, every: float = 60.0):
        from tqdm import tqdm

        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.what, self.total, self.unit, self.every = enabled, what, total, unit, every
        self.bar = tqdm(desc=f"build-data: {what}", total=total or None, unit=unit, unit_scale=True,
                        disable=not self.tty)
        self.start = self.last = time.perf_counter()

    def update(self, done: int, detail: str = "") -> None:
        self.bar.update(done - self.bar.n)
        now = time.perf_counter()
        if self.enabled and not self.tty and now - self.last >= self.every:
            self.last = now
            parts = [f"{done:,} of {self.total:,} {self.unit} ({100 * done / self.total:.0f}%)"] if self.total else []
            print(f"build-data: {self.what} " + ", ".join(parts + ([detail] if detail else [])), flush=True)

    def close(self) -> None:
        self.bar.close()


def _in_order(pool, func, tasks, ahead: int):
    """pool.imap with at most `ahead` blocks in flight: imap buffers every finished result, so a fast
    reader and a slow writer would hold the whole corpus in memory."""
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(func, (task,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _terminate(*_):
    raise KeyboardInterrupt("SIGTERM")  # the same clean stop as Ctrl-C (nothing left that looks like data)


def build(a: BuildArgs) -> dict:
    """Run the whole build; returns the manifest."""
    _check_args(a)  # argument and path errors first, before TensorFlow and the tokenizer load
    files = expand_inputs(a.inputs) if a.inputs else []
    tf = host_tf()

    from electra_jax.data.tokenizer import fingerprint, load_tokenizer, special_ids

    for path in files:  # before anything is written (the reader would find them only later)
        refuse_binary(path)
    tok = load_tokenizer(a.tokenizer)
    sp = special_ids(tok, a.tokenizer)
    vocab_size = tok.get_vocab_size()
    created = not exists(a.out)
    sources = _sources(files, fingerprint(tok))
    if not _prepare_out(a, sources):
        print(f"{a.out} already holds this build; nothing to do")
        return read_manifest(a.out)
    id_dtype = "uint16" if vocab_size <= 65536 else "int32"
    ends = tuple(sorted({i for t in (".", "!", "?") if (i := tok.token_to_id(t)) is not None}))
    spec = PackSpec(tok.to_str(), a.seed, a.seq_len, a.eval_fraction, sp.cls, sp.sep, sp.pad, id_dtype,
                    a.packing, ends)
    record = record_dtype(id_dtype, a.seq_len)
    input_bytes = _input_bytes(a, files)

    stats = ReadStats()
    docs = (iter_file_documents(files, stats, a.max_line_chars, a.text_key) if files
            else iter_tfds_documents(a.tfds, a.text_key, a.tfds_data_dir, stats))
    tasks = enumerate(blocks_of(docs))

    splits = {"train": a.shards, **({"eval": 1} if a.eval_fraction else {})}
    names = {s: [shard_name(s, i, n) for i in range(n)] for s, n in splits.items()}
    buckets = {"train": _bucket_count(input_bytes, record, a.seq_len, 1 - a.eval_fraction)}
    if a.eval_fraction:
        buckets["eval"] = _bucket_count(input_bytes, record, a.seq_len, a.eval_fraction)
    scratch = (os.path.join(a.out, SCRATCH) if not is_remote(a.out)
               else tempfile.mkdtemp(prefix="electra-jax-build-"))
    counts = {s: {"examples": 0, "tokens": 0, "content_tokens": 0, "two_segment": 0} for s in splits}
    input_tokens = dropped = 0
    start = time.perf_counter()
    progress = _Progress(a.progress, "read", sum(_size(f) for f in files), "B")
    main_thread = threading.current_thread() is threading.main_thread()  # where Python allows handlers
    previous_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    pool = None
    complete = False
    try:
        os.makedirs(scratch, exist_ok=True)
        bucket_files = {s: [open(os.path.join(scratch, f"{s}-{b:04d}.bin"), "wb") for b in range(n)]
                        for s, n in buckets.items()}
        if a.workers > 1:
            # Workers ignore Ctrl-C from their first instruction (an ignored signal stays ignored through
            # exec): it is the parent's to handle (it stops the pool); one reaching a starting worker
            # printed its traceback. A Ctrl-C in the milliseconds the pool takes to start is lost.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                pool = multiprocessing.get_context("spawn").Pool(a.workers, _init_worker, (spec, True))
            finally:
                signal.signal(signal.SIGINT, previous)
            results = _in_order(pool, pack_block, tasks, ahead=2 * a.workers)
        else:
            _init_worker(spec)
            results = map(pack_block, tasks)
        # 1. pack, each example to a random bucket (drawn per block: the same whatever the worker count)
        for index, result in enumerate(results):
            input_tokens += result["input_tokens"]
            dropped += result["dropped_tokens"]
            progress.update(stats.bytes_read, f"{input_tokens:,} tokens, "
                            f"{input_tokens / (time.perf_counter() - start):,.0f} tokens/s")
            for code, split in enumerate(splits):
                if split not in result:
                    continue
                ids, lengths, first_seps = result[split]
                rows = np.empty(len(ids), record)
                rows["ids"], rows["length"], rows["first_sep"] = ids, lengths, first_seps
                which = np.random.default_rng([a.seed, index, code]).integers(0, buckets[split], len(rows))
                for b in np.unique(which):
                    rows[which == b].tofile(bucket_files[split][b])
                c = counts[split]
                c["examples"] += len(rows)
                c["tokens"] += int(lengths.sum())
                two = first_seps < lengths - 1
                c["content_tokens"] += int((lengths - 2 - two).sum())
                c["two_segment"] += int(two.sum())
        progress.close()
        if pool is not None:
            pool.close()
        for fs in bucket_files.values():
            for f in fs:
                f.close()
        if counts["train"]["examples"] == 0:
            source = ", ".join(a.inputs) if a.inputs else a.tfds
            raise DataError(f"{source}: no examples were made (the input holds no non-empty lines); "
                            "nothing was written")
        # 2. each bucket permuted and dealt over the shards
        progress = _Progress(a.progress, "shuffle and write", sum(c["examples"] for c in counts.values()),
                             "examples")
        written = 0
        for code, (split, n) in enumerate(buckets.items()):
            writers = [tf.io.TFRecordWriter(os.path.join(a.out, name)) for name in names[split]]
            dealt = 0
            for b in range(n):
                path = os.path.join(scratch, f"{split}-{b:04d}.bin")
                rows = np.fromfile(path, np.dtype((np.void, record.itemsize)))
                os.remove(path)
                for row in rows[np.random.default_rng([a.seed, b, code, 1]).permutation(len(rows))]:
                    writers[dealt % len(writers)].write(row.tobytes())
                    dealt += 1
                written += len(rows)
                progress.update(written)
            for w in writers:
                w.close()
        progress.close()
        complete = True
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)
        progress.close()
        if pool is not None:
            pool.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
        if not complete:  # a failed build (bad input, Ctrl-C, SIGTERM) leaves nothing that looks like data
            for ns in names.values():
                for n in ns:
                    if tf.io.gfile.exists(os.path.join(a.out, n)):
                        tf.io.gfile.remove(os.path.join(a.out, n))
            if created and tf.io.gfile.exists(a.out) and not tf.io.gfile.listdir(a.out):
                tf.io.gfile.rmtree(a.out)  # and no empty --out made by this run

    seconds = time.perf_counter() - start
    kept = sum(c["content_tokens"] for c in counts.values())
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seq_len": a.seq_len,
        "id_dtype": id_dtype,
        "vocab_size": vocab_size,
        "special_ids": sp.as_dict(),
        "tokenizer_fingerprint": fingerprint(tok),
        "args": a.identity(),
        "sources": sources,
        "packing": a.packing,
        "shuffle": {"buckets": buckets, "bucket_bytes": BUCKET_BYTES},
        "splits": {s: {**counts[s], "files": names[s]} for s in splits},
        "tokens": {"input": input_tokens, "in_examples": kept, "dropped": dropped,
                   "kept_fraction": round(kept / max(input_tokens, 1), 6)},
        "input": {"files": stats.files, "documents": stats.documents, "lines": stats.lines,
                  "tokens": input_tokens, "bytes": stats.bytes_read,
                  "invalid_utf8_lines": stats.invalid_utf8_lines,
                  "invalid_utf8_files": stats.invalid_utf8_files[:20],
                  "split_long_lines": stats.split_long_lines},
        "build_seconds": round(seconds, 2),
        "tokens_per_second": round(input_tokens / max(seconds, 1e-9)),
    }
    if kept + dropped != input_tokens:  # every token is either in an example or counted as dropped
        raise AssertionError(f"token accounting: {kept} kept + {dropped} dropped != {input_tokens} read")
    # The tokenizer travels with the data, so a model exported on another machine gets the same one.
    with tf.io.gfile.GFile(os.path.join(a.out, TOKENIZER_FILE), "w") as f:
        f.write(tok.to_str())
    tmp = os.path.join(a.out, MANIFEST + ".tmp")
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    tf.io.gfile.rename(tmp, os.path.join(a.out, MANIFEST), overwrite=True)
    if stats.invalid_utf8_lines:
        print(f"warning: {stats.invalid_utf8_lines} lines were not valid UTF-8 and were decoded with "
              f"replacement characters, in: {', '.join(stats.invalid_utf8_files[:5])}")
    if stats.split_long_lines:
        print(f"warning: {stats.split_long_lines} lines longer than {a.max_line_chars} characters were "
              "split at spaces into several units")
    return manifest


def summary(manifest: dict) -> str:
    """What a build kept and dropped, in a line or two (printed at the end of every build)."""
    t = manifest["tokens"]
    splits = ", ".join(f"{s}: {v['examples']:,} examples ({100 * v['two_segment'] / max(v['examples'], 1):.0f}% "
                       "two-segment)" for s, v in manifest["splits"].items())
    why = ("cut by truncation: --packing original drops what overflows an example"
           if manifest["packing"] == "original" else "none: --packing fill continues a unit into the next example")
    return (f"{splits}\ntokens: {t['input']:,} read, {t['in_examples']:,} in examples "
            f"({100 * t['kept_fraction']:.2f}%), {t['dropped']:,} dropped ({why}); "
            f"{manifest['tokens_per_second']:,} tokens/s")
