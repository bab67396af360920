"""tf.data readers over `build-data` output, turning host batches into global sharded jax.Arrays.

Each host of a multi-host job reads its own slice of the shards (`process_index::process_count`).
Training: file shuffle per epoch, deterministic interleave, a shuffle buffer, repeat, host batches of
global_batch / process_count, batched parsing and prefetch, all seeded. The iterator's position
(shuffle buffer and file offsets included) can be saved and restored with `tf.train.Checkpoint`, so a
resumed run sees exactly the batches an uninterrupted run would have. Eval: finite, in order, the
last batch padded with empty rows (input_mask 0, which every metric ignores) and every host given the
same number of batches.
"""

from __future__ import annotations

import math
import os

import numpy as np

from electra_jax.data.builder import FORMAT, TOKENIZER_FILE, DataError, read_manifest
from electra_jax.fs import exists, host_tf, is_remote


def open_build(data_dir: str, seq_len: int | None = None) -> dict:
    """The manifest of a complete build, or a DataError that says what is wrong."""
    if not data_dir:
        raise DataError("no training data: pass --data DIR (a `build-data` output; or --config.data.path=DIR)")
    if not exists(data_dir):
        raise DataError(f"{data_dir}: no such directory; make it with `electra-jax build-data --out "
                        f"{data_dir}` (or check the path)")
    if not is_remote(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"{data_dir} is a file; give the directory `electra-jax build-data --out` wrote (it holds "
                        "manifest.json and the shards)")
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise DataError(f"{data_dir}: no manifest.json, so not a complete build; run "
                        f"`electra-jax build-data --out {data_dir}` (again)")
    if manifest.get("format") != FORMAT:
        why = (" (an older build-data's: it cut what overflowed an example and left the corpus in input "
               "order)" if manifest.get("format") == "electra-jax-pretraining/1" else "")
        raise DataError(f"{data_dir}: format {manifest.get('format')!r}, expected {FORMAT!r}{why}; rebuild it "
                        f"with `electra-jax build-data`")
    if seq_len is not None and manifest["seq_len"] != seq_len:
        raise DataError(f"{data_dir}: built with seq_len {manifest['seq_len']} but the config wants "
                        f"{seq_len}; rebuild with --seq-len {seq_len} or set --config.data.seq_len")
    return manifest


def build_tokenizer(data_dir: str, manifest: dict) -> str:
    """The tokenizer a build was made with: its copy in the build directory, else (builds made before
    the copy existed) the path `build-data` was given."""
    copy = os.path.join(data_dir, TOKENIZER_FILE)
    return copy if host_tf().io.gfile.exists(copy) else manifest["args"]["tokenizer"]


def _parser(manifest: dict):
    tf = host_tf()
    seq_len = manifest["seq_len"]
    dtype = {"uint16": tf.uint16, "int32": tf.int32}[manifest["id_dtype"]]

    def parse(serialized):  # a batch of records (builder.record_dtype) -> dense [B, S] int32 features
        raw = tf.cast(tf.io.decode_raw(serialized, dtype, little_endian=True), tf.int32)
        raw = tf.ensure_shape(raw, [None, seq_len + 2])
        ids, length, first_sep = raw[:, :seq_len], raw[:, seq_len:seq_len + 1], raw[:, seq_len + 1:]
        pos = tf.range(seq_len, dtype=tf.int32)[None, :]
        mask = pos < length
        segment = (pos > first_sep) & mask
        return {"input_ids": ids, "input_mask": tf.cast(mask, tf.int32),
                "segment_ids": tf.cast(segment, tf.int32)}

    return parse


def _files(data_dir: str, manifest: dict, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir}: the build has no {split!r} split; rebuild with --eval-fraction > 0")
    return [os.path.join(data_dir, name) for name in manifest["splits"][split]["files"]]


def _host_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise DataError(f"global batch {global_batch} does not split over {process_count} hosts")
    return global_batch // process_count


def _host(process_index, process_count) -> tuple[int, int]:
    """This host's (index, count): jax's, unless given (tests, tools)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def train_dataset(data_dir: str, global_batch: int, seed: int, process_index: int | None = None,
                  process_count: int | None = None, shuffle_buffer: int = 10_000, cycle_length: int = 4,
                  threads: int | None = None):
    """An endless, seeded tf.data.Dataset of this host's batches (dicts of int32 [host_batch, S]).

    `threads` caps tf.data's thread pool (default: as many as TensorFlow likes)."""
    tf = host_tf()
    process_index, process_count = _host(process_index, process_count)
    manifest = open_build(data_dir)
    files = _files(data_dir, manifest, "train")
    if len(files) < process_count:
        raise DataError(f"{data_dir}: {len(files)} shards cannot be split over {process_count} hosts; "
                        f"rebuild with --shards {process_count} or more")
    files = files[process_index::process_count]  # = host_files(...)
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(files)),
                       block_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.batch(_host_batch(global_batch, process_count), drop_remainder=True)
    ds = ds.map(_parser(manifest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_dataset(data_dir: str, global_batch: int, process_index: int | None = None,
                 process_count: int | None = None):
    """A finite dataset over the held-out split: same number of batches on every host, last padded."""
    tf = host_tf()
    process_index, process_count = _host(process_index, process_count)
    manifest = open_build(data_dir)
    files = _files(data_dir, manifest, "eval")
    host_batch = _host_batch(global_batch, process_count)
    per_host = math.ceil(manifest["splits"]["eval"]["examples"] / process_count)
    num_batches = max(1, math.ceil(per_host / host_batch))
    parse = _parser(manifest)
    seq_len = manifest["seq_len"]

    def pad(batch):
        missing = host_batch - tf.shape(batch["input_ids"])[0]
        return {k: tf.pad(v, [[0, missing], [0, 0]]) for k, v in batch.items()}

    empty = {k: tf.zeros([host_batch, seq_len], tf.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    ds = tf.data.TFRecordDataset(files).shard(process_count, process_index)
    ds = ds.batch(host_batch).map(parse).map(pad)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(num_batches)
    return ds.prefetch(2)


class Reader:
    """Iterate a dataset as global jax.Arrays laid out by `sharding`; save and restore its position."""

    def __init__(self, dataset, sharding=None):
        tf = host_tf()
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        self.sharding = sharding

    def __iter__(self):
        return self

    def __next__(self):
        tf = host_tf()
        try:
            batch = {k: v.numpy() for k, v in next(self._iterator).items()}
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise DataError(f"a data shard is truncated or corrupt ({e.message.splitlines()[0]}); "
                            "rebuild the data with `electra-jax build-data --overwrite`") from None
        if self.sharding is None:
            return batch
        import jax

        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in batch.items()}

    def save(self, path_prefix: str) -> str:
        """Write this host's position; returns the checkpoint path."""
        return self._checkpoint.write(path_prefix)

    def restore(self, path: str) -> None:
        self._checkpoint.read(path).assert_consumed()


def host_files(data_dir: str, split: str, process_index: int, process_count: int) -> list[str]:
    """The shards host `process_index` of `process_count` reads."""
    return _files(data_dir, open_build(data_dir), split)[process_index::process_count]


def read_examples(data_dir: str, split: str = "train") -> dict[str, np.ndarray]:
    """Every example of a split, shard by shard in file order, as numpy (for tests and tools)."""
    tf = host_tf()
    manifest = open_build(data_dir)
    ds = tf.data.TFRecordDataset(_files(data_dir, manifest, split)).batch(4096).map(_parser(manifest))
    parts = list(ds.as_numpy_iterator())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
