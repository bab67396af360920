"""The tf.data reader: per-host disjoint shards, seeded order, exact resume, global sharded arrays,
and clear errors for incomplete or corrupt builds."""

import gzip

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax.data import SAMPLE_CORPUS
from electra_jax.data.builder import FORMAT, BuildArgs, DataError, build
from electra_jax.data.reader import (Reader, eval_dataset, host_files, open_build, read_examples,
                                     train_dataset)
from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        text = "".join(line for _, line in zip(range(4000), f))
    (root / "kjv.txt").write_text(text)
    save_tokenizer(train_tokenizer(text.splitlines(), vocab_size=1500), str(root / "tok"))
    build(BuildArgs(tokenizer=str(root / "tok"), out=str(root / "out"), inputs=[str(root / "kjv.txt")],
                    seq_len=64, shards=4, eval_fraction=0.1, progress=False))
    return str(root / "out")


def _rows(batches):
    return [row.tobytes() for b in batches for row in b["input_ids"]]


def _take(ds, n):
    it = iter(ds)
    return [{k: v.numpy() for k, v in next(it).items()} for _ in range(n)]


def test_hosts_read_disjoint_shards_that_cover_the_data(data_dir):
    total = open_build(data_dir)["splits"]["train"]["examples"]
    hosts = [host_files(data_dir, "train", i, 2) for i in range(2)]
    assert not set(hosts[0]) & set(hosts[1])
    assert sorted(hosts[0] + hosts[1]) == sorted(host_files(data_dir, "train", 0, 1))
    # Read ~10 epochs of each host's half: together the hosts see every example, none reaches both.
    seen = []
    for i in range(2):
        ds = train_dataset(data_dir, 8, seed=0, process_index=i, process_count=2, shuffle_buffer=64)
        rows = _rows(_take(ds, total * 5 // 8))
        seen.append(set(rows))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == len(set(_rows([read_examples(data_dir)])))


def test_same_seed_same_batches_and_batches_are_well_formed(data_dir):
    a = _take(train_dataset(data_dir, 16, seed=3), 5)
    b = _take(train_dataset(data_dir, 16, seed=3), 5)
    c = _take(train_dataset(data_dir, 16, seed=4), 5)
    assert _rows(a) == _rows(b) and _rows(a) != _rows(c)
    batch = a[0]
    assert batch["input_ids"].shape == batch["input_mask"].shape == (16, 64)
    assert batch["input_ids"].dtype == np.int32
    assert np.all(batch["input_ids"][:, 0] == 2)  # [CLS]
    assert np.all(batch["input_ids"][batch["input_mask"] == 0] == 0)  # padding is [PAD]
    assert np.all(batch["segment_ids"][batch["input_mask"] == 0] == 0)


def test_resume_sees_exactly_the_batches_of_an_uninterrupted_read(data_dir, tmp_path):
    uninterrupted = Reader(train_dataset(data_dir, 8, seed=0))
    expected = [next(uninterrupted) for _ in range(30)]
    first = Reader(train_dataset(data_dir, 8, seed=0))
    for _ in range(12):
        next(first)
    path = first.save(str(tmp_path / "reader"))
    resumed = Reader(train_dataset(data_dir, 8, seed=0))
    resumed.restore(path)
    assert _rows([next(resumed) for _ in range(18)]) == _rows(expected[12:])


def test_batches_arrive_as_global_sharded_arrays(data_dir):
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    batch = next(Reader(train_dataset(data_dir, 16, seed=0), sharding))
    for v in batch.values():
        assert isinstance(v, jax.Array) and v.shape == (16, 64) and v.sharding == sharding
        assert v.addressable_shards[0].data.shape == (2, 64)


def test_eval_is_finite_padded_and_complete(data_dir):
    n = open_build(data_dir)["splits"]["eval"]["examples"]
    batches = list(eval_dataset(data_dir, 16).as_numpy_iterator())
    assert len(batches) == -(-n // 16)
    assert sum(int(b["input_mask"].any(1).sum()) for b in batches) == n
    per_host = [list(eval_dataset(data_dir, 16, i, 2).as_numpy_iterator()) for i in range(2)]
    assert len(per_host[0]) == len(per_host[1])  # every host runs the same number of eval steps
    # A batch larger than the whole split: one padded batch, not an extra empty one.
    [whole] = list(eval_dataset(data_dir, 2 * n).as_numpy_iterator())
    assert int(whole["input_mask"].any(1).sum()) == n and whole["input_ids"].shape[0] == 2 * n


def test_incomplete_and_corrupt_builds_are_refused(data_dir, tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        train_dataset(str(tmp_path), 8, seed=0)
    with pytest.raises(DataError, match="seq_len 64 but the config wants 128"):
        open_build(data_dir, seq_len=128)
    with pytest.raises(DataError, match="4 shards cannot be split over 8 hosts"):
        train_dataset(data_dir, 8, seed=0, process_count=8)
    import json
    import shutil

    for version, other_format in enumerate(("electra-jax-pretraining/1", "electra-jax-pretraining/3")):
        old = tmp_path / f"format{version}"  # an older or a newer builder's layout
        shutil.copytree(data_dir, old)
        manifest = json.loads((old / "manifest.json").read_text())
        (old / "manifest.json").write_text(json.dumps({**manifest, "format": other_format}))
        with pytest.raises(DataError, match=f"format '{other_format}', expected '{FORMAT}'.*; rebuild it"):
            open_build(str(old))

    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    for shard in broken.glob("train-*.tfrecord"):
        shard.write_bytes(shard.read_bytes()[:1000])  # truncated mid-record
    reader = Reader(train_dataset(str(broken), 8, seed=0))
    with pytest.raises(DataError, match="truncated or corrupt"):
        for _ in range(100):
            next(reader)
