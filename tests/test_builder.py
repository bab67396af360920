"""build-data against an independently written reference of google-research/electra's algorithm, and
the bad inputs it must refuse or survive."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from electra_jax.data.builder import BuildArgs, DataError, build
from electra_jax.data.reader import read_examples
from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer

SEQ_LEN = 32
CLS, SEP, PAD = 2, 3, 0


def _documents(seed=0, num_docs=40):
    """Documents whose words are unique to them (d{doc}w{k}), so an example shows which doc it came from."""
    rng = np.random.default_rng(seed)
    return [[" ".join(f"d{d}w{rng.integers(0, 6)}" for _ in range(rng.integers(1, 22)))
             for _ in range(rng.integers(1, 10))] for d in range(num_docs)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = _documents()
    # Two files; documents separated by one or more blank (or whitespace-only) lines.
    for name, part in (("a.txt", docs[:25]), ("b.txt", docs[25:])):
        (root / name).write_text("\n   \n\n".join("\n".join(f"  {line} " for line in doc) for doc in part))
    tok = train_tokenizer((line for doc in docs for line in doc), vocab_size=2000, min_frequency=1)
    save_tokenizer(tok, str(root / "tok"))
    for word in ("d3w1", "d39w5"):
        assert tok.encode(word, add_special_tokens=False).tokens == [word]
    return root, docs, tok


def _build(root, out, **kw):
    args = dict(tokenizer=str(root / "tok"), out=str(out), inputs=[str(root / "*.txt")], seq_len=SEQ_LEN,
                shards=1, progress=False)
    args.update(kw)
    return build(BuildArgs(**args))


def _reference(doc_ids, seq_len, rng):
    """ExampleBuilder written out plainly: lines accumulate to the target, then A/B are cut."""
    examples, state = [], {"target": seq_len}

    def cut(chunk):
        limit = 100000 if rng.random() < 0.1 else (state["target"] - 3) // 2
        a, b = [], []
        for sentence in chunk:
            if not a:
                a = a + sentence
            elif len(a) + len(sentence) < limit:
                a = a + sentence
            elif not b and len(a) < limit and rng.random() < 0.5:
                a = a + sentence
            else:
                b = b + sentence
        a = a[:seq_len - 2]
        b = b[:max(0, seq_len - len(a) - 3)]
        state["target"] = rng.randint(5, seq_len) if rng.random() < 0.05 else seq_len
        ids = [CLS] + a + [SEP] + (b + [SEP] if b else [])
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1 if b else 0)
        return ids + [PAD] * (seq_len - len(ids)), segments + [0] * (seq_len - len(segments)), len(ids)

    for doc in doc_ids:
        chunk = []
        for line in doc:
            chunk.append(line)
            if sum(len(x) for x in chunk) >= state["target"]:
                examples.append(cut(chunk))
                chunk = []
        if chunk:
            examples.append(cut(chunk))
    return examples


def test_examples_equal_reference_and_respect_documents(corpus, tmp_path):
    root, docs, tok = corpus
    manifest = _build(root, tmp_path / "out", seed=7)
    got = read_examples(str(tmp_path / "out"))
    doc_ids = [[tok.encode(line, add_special_tokens=False).ids for line in doc] for doc in docs]
    expected = _reference(doc_ids, SEQ_LEN, random.Random(7 * 1_000_003 + 0))  # one block here
    assert manifest["splits"]["train"]["examples"] == len(expected) == len(got["input_ids"])
    np.testing.assert_array_equal(got["input_ids"], [e[0] for e in expected])
    np.testing.assert_array_equal(got["segment_ids"], [e[1] for e in expected])
    np.testing.assert_array_equal(got["input_mask"].sum(1), [e[2] for e in expected])
    assert any(e[1][-1] == 0 and 1 in e[1] for e in expected)  # both one- and two-segment examples
    assert any(1 not in e[1] for e in expected)

    # No example crosses a document; each document's tokens come out in order, minus truncation.
    vocab = {i: t for t, i in tok.get_vocab().items()}
    seen_docs = set()
    for row, mask, segments in zip(got["input_ids"], got["input_mask"], got["segment_ids"]):
        words = [vocab[i] for i in row[mask == 1]]
        doc_of = {w.split("w")[0] for w in words if w not in ("[CLS]", "[SEP]")}
        assert len(doc_of) == 1
        d = int(doc_of.pop()[1:])
        seen_docs.add(d)
        source = " ".join(docs[d]).split()
        for segment in (0, 1):  # lines keep their order within each segment
            it = iter(source)
            part = [vocab[i] for i, s, m in zip(row, segments, mask) if m and s == segment]
            assert all(w in it for w in part if w not in ("[CLS]", "[SEP]"))
    assert seen_docs == set(range(len(docs)))
    # The tokenizer travels with the examples (export on another machine finds it there).
    assert (tmp_path / "out" / "tokenizer.json").read_text() == tok.to_str()


def test_deterministic_and_independent_of_worker_count(corpus, tmp_path):
    root, _, _ = corpus
    _build(root, tmp_path / "one", workers=1, shards=3, eval_fraction=0.2)
    _build(root, tmp_path / "two", workers=2, shards=3, eval_fraction=0.2)
    for name in sorted(os.listdir(tmp_path / "one")):
        if name.endswith(".tfrecord"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    a, b = read_examples(str(tmp_path / "one"), "eval"), read_examples(str(tmp_path / "two"), "eval")
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def test_output_directory_rules(corpus, tmp_path):
    root, _, _ = corpus
    out = tmp_path / "out"
    first = _build(root, out)
    assert _build(root, out)["created"] == first["created"]  # the same build again: nothing to do
    with pytest.raises(DataError, match="already holds a different build.*--overwrite"):
        _build(root, out, seed=1)
    assert _build(root, out, seed=1, overwrite=True)["args"]["seed"] == 1
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    with pytest.raises(DataError, match="incomplete build"):
        _build(root, stray)


def test_bad_inputs(corpus, tmp_path):
    root, _, _ = corpus
    tok = str(root / "tok")
    with pytest.raises(DataError, match="no files match"):
        build(BuildArgs(tokenizer=tok, out=str(tmp_path / "x"), inputs=[str(tmp_path / "none*.txt")]))
    for seq_len in (4, 1024):
        with pytest.raises(DataError, match="--seq-len"):
            _build(root, tmp_path / "x", seq_len=seq_len)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(DataError, match="empty.txt: no examples"):
        build(BuildArgs(tokenizer=tok, out=str(tmp_path / "e"), inputs=[str(empty)], progress=False))
    assert not (tmp_path / "e").exists()  # the --out it made is removed again, with nothing in it
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="model.bin: looks binary"):
        build(BuildArgs(tokenizer=tok, out=str(tmp_path / "b"), inputs=[str(binary)], progress=False))


def test_invalid_utf8_is_counted_and_long_lines_are_split(corpus, tmp_path):
    root, _, _ = corpus
    odd = tmp_path / "odd.txt"
    long_line = " ".join(["d1w1 d2w2 d3w3"] * 700_000)  # ~10 MB on one line
    odd.write_bytes(b"d1w1 \xff\xfe d2w2\n\n" + long_line.encode() + b"\n")
    manifest = build(BuildArgs(tokenizer=str(root / "tok"), out=str(tmp_path / "o"), inputs=[str(odd)],
                               seq_len=SEQ_LEN, shards=1, progress=False))
    assert manifest["input"]["invalid_utf8_lines"] == 1
    assert manifest["input"]["split_long_lines"] == 1
    assert manifest["splits"]["train"]["examples"] > 100  # one example per 100k-character piece


def test_tfds_source_with_a_prepared_data_dir(corpus, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    root, docs, _ = corpus
    # A dataset prepared locally, as a user would have on a machine with network or a GCS data_dir.
    tfds.dataset_builders.TfDataBuilder(
        name="electra_test_text", version="1.0.0", data_dir=str(tmp_path / "tfds"),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"body": ["\n".join(d) for d in docs]})},
        features=tfds.features.FeaturesDict({"body": tfds.features.Text()}),
    ).download_and_prepare()
    manifest = build(BuildArgs(tokenizer=str(root / "tok"), out=str(tmp_path / "t"),
                               tfds="electra_test_text:train", text_key="body",
                               tfds_data_dir=str(tmp_path / "tfds"), seq_len=SEQ_LEN, shards=2,
                               progress=False))
    assert manifest["input"]["documents"] == len(docs)
    assert manifest["splits"]["train"]["examples"] > len(docs) // 2
    with pytest.raises(DataError, match="no 'nope' feature"):
        build(BuildArgs(tokenizer=str(root / "tok"), out=str(tmp_path / "t2"), tfds="electra_test_text",
                        text_key="nope", tfds_data_dir=str(tmp_path / "tfds"), progress=False))


def test_cli_errors_are_one_line(corpus, tmp_path):
    root, _, _ = corpus
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "build-data", "--input",
                          str(tmp_path / "missing*.txt"), "--tokenizer", str(root / "tok"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "no files match" in out.stderr and "Traceback" not in out.stderr


class _ScriptedRandom:
    """random.Random's two methods, answering from a script (and failing on an unexpected draw)."""

    def __init__(self, script):
        self.script = list(script)

    def random(self):
        kind, value = self.script.pop(0)
        assert kind == "random", f"expected a {kind} draw, got random()"
        return value

    def randint(self, a, b):
        kind, value = self.script.pop(0)
        assert kind == "randint" and (a, b) == (5, 16), (kind, a, b)
        return value


def test_the_packing_follows_the_originals_draws_worked_by_hand():
    """google-research/electra build_pretraining_dataset.py ExampleBuilder at max_length 16, its random
    draws scripted, the cuts worked out by hand from its source:

    doc 1, lines of 4, 4, 5, 9 tokens: 4 + 4 + 5 < 16 <= 22, so the 4th line cuts. random() 0.5 >= 0.1:
      two segments, first target (16 - 3) // 2 = 6. Line 1 -> A (A empty). Line 2: 4 + 4 >= 6, B empty,
      4 < 6, random() 0.7 >= 0.5 -> B. Lines 3, 4 -> B (B not empty, no draw). B cut to 16 - 4 - 3 = 9.
      random() 0.9 >= 0.05: next target 16.
    doc 2, one line of 2 tokens, ended: random() 0.05 < 0.1: one segment. random() 0.01 < 0.05: the next
      target is randint(5, 16) -> 7.
    doc 3, lines of 4 and 4: 8 >= 7 cuts. random() 0.5: first target (7 - 3) // 2 = 2. Line 1 -> A;
      line 2: 4 >= 2, so the 0.5 draw is not even made -> B. random() 0.9: target 16."""
    from electra_jax.data.builder import ExampleBuilder, layout

    script = [("random", 0.5), ("random", 0.7), ("random", 0.9),
              ("random", 0.05), ("random", 0.01), ("randint", 7),
              ("random", 0.5), ("random", 0.9)]
    rng = _ScriptedRandom(script)
    builder = ExampleBuilder(16, rng)
    line = lambda start, n: list(range(start, start + n))
    doc1 = [line(10, 4), line(20, 4), line(30, 5), line(40, 9)]
    assert [builder.add_line(x) for x in doc1[:3]] == [None] * 3
    assert builder.add_line(doc1[3]) == (line(10, 4), line(20, 4) + line(30, 5))
    assert builder.end_document() is None
    assert builder.add_line(line(50, 2)) is None
    assert builder.end_document() == (line(50, 2), [])
    assert builder.target_length == 7
    assert builder.add_line(line(60, 4)) is None
    assert builder.add_line(line(70, 4)) == (line(60, 4), line(70, 4))
    assert builder.target_length == 16 and not rng.script  # every draw made, none more
    ids, length, first_sep = layout(line(10, 4), line(20, 4) + line(30, 5), CLS, SEP, PAD, 16)
    assert ids.tolist() == [CLS, 10, 11, 12, 13, SEP, 20, 21, 22, 23, 30, 31, 32, 33, 34, SEP]
    assert (length, first_sep) == (16, 5)
    ids, length, first_sep = layout(line(50, 2), [], CLS, SEP, PAD, 16)
    assert ids.tolist() == [CLS, 50, 51, SEP] + [PAD] * 12 and (length, first_sep) == (4, 3)
