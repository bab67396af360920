"""`electra-jax build-data`: text -> packed ELECTRA pretraining examples in TFRecord shards.

The packing is google-research/electra `build_pretraining_dataset.py`'s ExampleBuilder: non-empty lines
are units, blank lines and file ends close a document, lines accumulate until the target length, then
split into segments A and B (single segment with p=0.1; the next target is randint(5, max) with
p=0.05), truncated to fit `[CLS] A [SEP] B [SEP]`. Two documented differences:

- Randomness is per block of documents (seeded from (seed, block index)), not per job, so the output
  does not depend on the worker count. Blank lines inside an empty chunk draw nothing (the original
  appends empty sentences that can consume random numbers).
- Literal "[SEP]"/"[MASK]" text is tokenised as text, never as the special token.

Each example is stored compactly: the padded ids as raw little-endian bytes (uint16 when the
vocabulary fits, else int32), the real length and the index of the first [SEP]; the reader rebuilds
input_mask and segment_ids. `manifest.json` is written last (atomically), so a build without it is
incomplete and the reader refuses it.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob as globlib
import gzip
import io
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from electra_jax.errors import UserError
from electra_jax.fs import exists, host_tf, is_remote, read_text, writable_dir

FORMAT = "electra-jax-pretraining/1"
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
    """Accumulate tokenised lines of a document and cut them into (A, B) segment pairs."""

    def __init__(self, max_length: int, rng: random.Random):
        self.max_length = max_length
        self.target_length = max_length
        self.rng = rng
        self.sentences: list[list[int]] = []
        self.length = 0

    def add_line(self, ids: list[int]):
        """Add one non-empty line; returns (A, B) once the chunk reaches the target length."""
        self.sentences.append(ids)
        self.length += len(ids)
        return self._create() if self.length >= self.target_length else None

    def end_document(self):
        return self._create() if self.length else None

    def _create(self):
        if self.rng.random() < 0.1:
            first_target = 100000  # a single segment, as in classification tasks
        else:
            first_target = (self.target_length - 3) // 2  # room for [CLS] and two [SEP]
        first: list[int] = []
        second: list[int] = []
        for sentence in self.sentences:
            if (not first or len(first) + len(sentence) < first_target
                    or (not second and len(first) < first_target and self.rng.random() < 0.5)):
                first += sentence
            else:
                second += sentence
        first = first[: self.max_length - 2]
        second = second[: max(0, self.max_length - len(first) - 3)]
        self.sentences, self.length = [], 0
        if self.rng.random() < 0.05:
            self.target_length = self.rng.randint(5, self.max_length)
        else:
            self.target_length = self.max_length
        return first, second


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


def _open_bytes(path: str):
    if is_remote(path):
        f = host_tf().io.gfile.GFile(path, "rb")
    else:
        f = open(path, "rb")
    return gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


@dataclasses.dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    documents: int = 0
    invalid_utf8_lines: int = 0
    split_long_lines: int = 0
    invalid_utf8_files: list = dataclasses.field(default_factory=list)


def iter_file_documents(files: Sequence[str], stats: ReadStats,
                        max_line_chars: int) -> Iterator[list[str]]:
    """Documents (lists of non-empty, stripped lines) from text files; refuses binary files."""
    for path in files:
        stats.files += 1
        refuse_binary(path)
        bad, chars = 0, 0
        doc: list[str] = []
        with _open_bytes(path) as f:  # streamed: a corpus file may be far larger than memory
            for raw in io.TextIOWrapper(f, encoding="utf-8", errors="replace"):
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


_WORKER: dict = {}


def _init_worker(spec: PackSpec, single_threaded: bool = False) -> None:
    if single_threaded:
        os.environ["RAYON_NUM_THREADS"] = "1"  # one tokenizer thread per worker: the workers are the parallelism
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(spec.tokenizer_json)
    tok.encode_special_tokens = True  # "[SEP]" in the text is text
    _WORKER.update(spec=spec, tok=tok)


def pack_block(task: tuple[int, list[list[str]]]) -> dict:
    """Tokenise and pack one block of documents: {'train'|'eval': (ids, lengths, first_sep)}, counts."""
    index, docs = task
    spec: PackSpec = _WORKER["spec"]
    lines = [line for doc in docs for line in doc]
    tok = _WORKER["tok"]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast skips offsets (tokenizers>=0.21)
    encoded = encode(lines, add_special_tokens=False)
    rng = random.Random(spec.seed * 1_000_003 + index)
    split_rng = random.Random(-(spec.seed * 1_000_003 + index) - 1)
    builders = {"train": ExampleBuilder(spec.seq_len, rng), "eval": ExampleBuilder(spec.seq_len, rng)}
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
            example = builder.add_line(ids)
            if example:
                rows[split].append(layout(*example, spec.cls_id, spec.sep_id, spec.pad_id, spec.seq_len))
        example = builder.end_document()
        if example:
            rows[split].append(layout(*example, spec.cls_id, spec.sep_id, spec.pad_id, spec.seq_len))
    out = {"input_tokens": input_tokens}
    for split, items in rows.items():
        if items:
            ids = np.stack([r[0] for r in items]).astype(spec.id_dtype)
            out[split] = (ids, np.array([r[1] for r in items]), np.array([r[2] for r in items]))
    return out


# ----------------------------------------------------------------------------- writing


def serialize(ids_row: np.ndarray, length: int, first_sep: int) -> bytes:
    tf = host_tf()

    feature = {
        "input_ids": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ids_row.astype(
            ids_row.dtype.newbyteorder("<")).tobytes()])),
        "length": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(length)])),
        "first_sep": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(first_sep)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


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
    progress: bool = True

    def identity(self) -> dict:
        """What makes two builds the same build (not workers, progress or overwrite)."""
        keep = ("tokenizer", "inputs", "tfds", "text_key", "seq_len", "shards", "eval_fraction",
                "seed", "max_line_chars")
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
    writable_dir(a.out, "--out", keep=False)  # a file, read-only, a bucket without access: now, not after tokenising


def _prepare_out(a: BuildArgs) -> bool:
    """False if `out` already holds this exact build. Refuses a different build unless --overwrite."""
    tf = host_tf()

    gfile = tf.io.gfile
    manifest = read_manifest(a.out)
    existing = gfile.listdir(a.out) if gfile.isdir(a.out) else []
    if manifest is not None and manifest.get("args") == a.identity() and not a.overwrite:
        return False
    if existing and not a.overwrite:
        what = "a different build" if manifest else "files (an incomplete build?)"
        raise DataError(f"{a.out} already holds {what}; choose another --out or pass --overwrite")
    gfile.makedirs(a.out)
    if manifest is not None:  # first, so a crash below never leaves a complete-looking mix
        gfile.remove(os.path.join(a.out, MANIFEST))
    for name in existing:
        if name.endswith(".tfrecord") or name.startswith(MANIFEST):
            path = os.path.join(a.out, name)
            if gfile.exists(path):
                gfile.remove(path)
    return True


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
    if not _prepare_out(a):
        print(f"{a.out} already holds this build; nothing to do")
        return read_manifest(a.out)
    id_dtype = "uint16" if vocab_size <= 65536 else "int32"
    spec = PackSpec(tok.to_str(), a.seed, a.seq_len, a.eval_fraction, sp.cls, sp.sep, sp.pad, id_dtype)

    stats = ReadStats()
    docs = (iter_file_documents(files, stats, a.max_line_chars) if files
            else iter_tfds_documents(a.tfds, a.text_key, a.tfds_data_dir, stats))
    tasks = enumerate(blocks_of(docs))

    names = {"train": [shard_name("train", i, a.shards) for i in range(a.shards)]}
    writers = {"train": [tf.io.TFRecordWriter(os.path.join(a.out, n)) for n in names["train"]]}
    if a.eval_fraction:
        names["eval"] = [shard_name("eval", 0, 1)]
        writers["eval"] = [tf.io.TFRecordWriter(os.path.join(a.out, names["eval"][0]))]
    counts = {s: {"examples": 0, "tokens": 0} for s in writers}
    input_tokens = 0
    start = time.perf_counter()

    from tqdm import tqdm

    # A bar only on a terminal: in a log file its redraws are one endless line.
    bar = tqdm(desc="build-data", unit=" tok", unit_scale=True, disable=not (a.progress and sys.stderr.isatty()))
    if a.workers > 1:
        # Workers ignore Ctrl-C from their first instruction (an ignored signal stays ignored through exec):
        # it is the parent's to handle (it stops the pool); one reaching a starting worker printed its
        # traceback. A Ctrl-C in the milliseconds the pool takes to start is lost.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = multiprocessing.get_context("spawn").Pool(a.workers, _init_worker, (spec, True))
        finally:
            signal.signal(signal.SIGINT, previous)
        results = pool.imap(pack_block, tasks)
    else:
        pool = None
        _init_worker(spec)
        results = map(pack_block, tasks)
    complete = False
    try:
        for result in results:
            input_tokens += result["input_tokens"]
            bar.update(result["input_tokens"])
            for split in writers:
                if split not in result:
                    continue
                ids, lengths, first_seps = result[split]
                c = counts[split]
                for row, length, first_sep in zip(ids, lengths, first_seps):
                    shard = writers[split][c["examples"] % len(writers[split])]
                    shard.write(serialize(row, length, first_sep))
                    c["examples"] += 1
                    c["tokens"] += int(length)
        complete = counts["train"]["examples"] > 0
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        for ws in writers.values():
            for w in ws:
                w.close()
        if not complete:  # a failed build (bad input, Ctrl-C) leaves nothing that looks like data
            for ns in names.values():
                for n in ns:
                    if tf.io.gfile.exists(os.path.join(a.out, n)):
                        tf.io.gfile.remove(os.path.join(a.out, n))
            if created and not tf.io.gfile.listdir(a.out):  # and no empty --out made by this run
                tf.io.gfile.rmtree(a.out)

    seconds = time.perf_counter() - start
    if counts["train"]["examples"] == 0:
        source = ", ".join(a.inputs) if a.inputs else a.tfds
        raise DataError(f"{source}: no examples were made (the input holds no non-empty lines); "
                        "nothing was written")
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seq_len": a.seq_len,
        "id_dtype": id_dtype,
        "vocab_size": vocab_size,
        "special_ids": sp.as_dict(),
        "tokenizer_fingerprint": fingerprint(tok),
        "args": a.identity(),
        "splits": {s: {**counts[s], "files": names[s]} for s in writers},
        "input": {"files": stats.files, "documents": stats.documents, "lines": stats.lines,
                  "tokens": input_tokens, "invalid_utf8_lines": stats.invalid_utf8_lines,
                  "invalid_utf8_files": stats.invalid_utf8_files[:20],
                  "split_long_lines": stats.split_long_lines},
        "build_seconds": round(seconds, 2),
        "tokens_per_second": round(input_tokens / max(seconds, 1e-9)),
    }
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
