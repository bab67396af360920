"""build-data against an independently written reference of google-research/electra's algorithm, and
the bad inputs it must refuse or survive."""

import collections
import json
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


def _sorted_rows(*columns):
    """Rows of several [N, S] arrays side by side, sorted: the shuffle's order taken out."""
    return sorted(tuple(np.concatenate([np.asarray(c[i]) for c in columns]).tolist()) for i in range(len(columns[0])))


def test_examples_equal_reference_and_respect_documents(corpus, tmp_path):
    """--packing original: the examples are exactly those of google-research/electra's algorithm (as a
    set: the build shuffles their order)."""
    root, docs, tok = corpus
    manifest = _build(root, tmp_path / "out", seed=7, packing="original")
    got = read_examples(str(tmp_path / "out"))
    doc_ids = [[tok.encode(line, add_special_tokens=False).ids for line in doc] for doc in docs]
    expected = _reference(doc_ids, SEQ_LEN, random.Random(7 * 1_000_003 + 0))  # one block here
    assert manifest["splits"]["train"]["examples"] == len(expected) == len(got["input_ids"])
    masks = [[1] * e[2] + [0] * (SEQ_LEN - e[2]) for e in expected]
    assert (_sorted_rows(got["input_ids"], got["segment_ids"], got["input_mask"])
            == _sorted_rows([e[0] for e in expected], [e[1] for e in expected], masks))
    assert any(e[1][-1] == 0 and 1 in e[1] for e in expected)  # both one- and two-segment examples
    assert any(1 not in e[1] for e in expected)
    # What truncation cut is counted, not lost silently.
    total = sum(len(x) for d in doc_ids for x in d)
    in_examples = sum(e[2] - (3 if 1 in e[1] else 2) for e in expected)
    assert manifest["tokens"] == {"input": total, "in_examples": in_examples, "dropped": total - in_examples,
                                  "kept_fraction": round(in_examples / total, 6)}
    assert total - in_examples > 0

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
    # The same arguments over an edited input file, or a retrained tokenizer at the same path, are another
    # build (it used to say "nothing to do" and keep examples of the old text).
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "c.txt").write_text("d1w1 d2w2\n")
    made = _build(root, tmp_path / "e", inputs=[str(edited / "c.txt")])
    (edited / "c.txt").write_text("d1w1 d2w2 d3w3 d4w4\n")
    os.utime(edited / "c.txt", ns=(1, 1))
    with pytest.raises(DataError, match="already holds a different build"):
        _build(root, tmp_path / "e", inputs=[str(edited / "c.txt")])
    assert _build(root, tmp_path / "e", inputs=[str(edited / "c.txt")], overwrite=True)["tokens"]["input"] == 4
    assert made["tokens"]["input"] == 2
    # What a killed build leaves (shards, no manifest, its scratch) is cleared by the rerun, no flag needed ...
    stray = tmp_path / "stray"
    (stray / ".build-data-tmp").mkdir(parents=True)
    (stray / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    (stray / ".build-data-tmp" / "train-0000.bin").write_bytes(b"half")
    assert _build(root, stray)["splits"]["train"]["examples"] > 0
    assert sorted(os.listdir(stray)) == ["manifest.json", "tokenizer.json", "train-00000-of-00001.tfrecord"]
    # ... but a directory holding anything else is not ours to empty.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a build of ours.*--overwrite"):
        _build(root, other)


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
    assert [builder.add_line(x) for x in doc1[:3]] == [[]] * 3
    assert builder.add_line(doc1[3]) == [(line(10, 4), line(20, 4) + line(30, 5))]
    assert builder.dropped == 9  # B's 4 + 5 + 9 = 18 tokens cut to 9: the original loses them
    assert builder.end_document() == []
    assert builder.add_line(line(50, 2)) == []
    assert builder.end_document() == [(line(50, 2), [])]
    assert builder.target_length == 7
    assert builder.add_line(line(60, 4)) == []
    assert builder.add_line(line(70, 4)) == [(line(60, 4), line(70, 4))]
    assert builder.target_length == 16 and not rng.script  # every draw made, none more
    ids, length, first_sep = layout(line(10, 4), line(20, 4) + line(30, 5), CLS, SEP, PAD, 16)
    assert ids.tolist() == [CLS, 10, 11, 12, 13, SEP, 20, 21, 22, 23, 30, 31, 32, 33, 34, SEP]
    assert (length, first_sep) == (16, 5)
    ids, length, first_sep = layout(line(50, 2), [], CLS, SEP, PAD, 16)
    assert ids.tolist() == [CLS, 50, 51, SEP] + [PAD] * 12 and (length, first_sep) == (4, 3)


def test_fill_packing_worked_by_hand():
    """--packing fill at max_length 16, the same draws as the original's, worked out by hand:

    doc 1, lines of 4, 4, 5, 9 tokens: the 4th line makes 22 >= 16 - 2. random() 0.5: two segments,
      13 tokens of room, first target 6: lines 1-3 fill it exactly (4 + 4 + 5), the 9-token line waits.
      A/B as the original: line 1 -> A, line 2: coin 0.7 -> B, line 3 -> B. random() 0.9: target 16.
    end of doc 1: random() 0.05: one segment (14 of room) holds the 9 tokens. random() 0.01: randint -> 7.
    doc 2, one line of 12 tokens (12 >= 7 - 2): random() 0.5: two segments, 7 - 3 = 4 tokens of room,
      first target 2: the line's first 4 tokens, the other 8 wait. One unit, so no B: A is cut at 2.
      random() 0.9: target 16. End of doc: random() 0.3: two segments, the 8 tokens, A cut at 6.
    doc 3, one line of 40 tokens: random() 0.05: one segment, 14 tokens; random() 0.9; 26 left >= 14:
      random() 0.5, 13 tokens, A 6 + B 7; random() 0.9; 13 left < 14 wait for the document's end, which
      makes A 6 + B 7 of them (random() 0.5, 0.9). Every token is kept, in order."""
    from electra_jax.data.builder import FillBuilder

    script = [("random", 0.5), ("random", 0.7), ("random", 0.9), ("random", 0.05), ("random", 0.01),
              ("randint", 7), ("random", 0.5), ("random", 0.9), ("random", 0.3), ("random", 0.9),
              ("random", 0.05), ("random", 0.9), ("random", 0.5), ("random", 0.9), ("random", 0.5),
              ("random", 0.9)]
    rng = _ScriptedRandom(script)
    builder = FillBuilder(16, rng)
    line = lambda start, n: list(range(start, start + n))
    assert [builder.add_line(x) for x in (line(10, 4), line(20, 4), line(30, 5))] == [[]] * 3
    assert builder.add_line(line(40, 9)) == [(line(10, 4), line(20, 4) + line(30, 5))]
    assert builder.end_document() == [(line(40, 9), [])]
    assert builder.target_length == 7
    assert builder.add_line(line(50, 12)) == [(line(50, 2), line(52, 2))]
    assert builder.end_document() == [(line(54, 6), line(60, 2))]
    assert builder.add_line(line(100, 40)) == [(line(100, 14), []), (line(114, 6), line(120, 7))]
    assert builder.end_document() == [(line(127, 6), line(133, 7))]
    assert not rng.script and builder.dropped == 0


def test_fill_packing_keeps_every_token_in_order_of_long_lines():
    """Documents of one long line each (a crawl, a newsgroup post): every token lands in exactly one
    example, in order, examples are full but for a document's last, and most have two segments."""
    from electra_jax.data.builder import FillBuilder, layout

    rng = np.random.default_rng(0)
    builder = FillBuilder(SEQ_LEN, random.Random(0))
    lengths, pairs, not_last = [], 0, 0
    for doc in range(300):
        units = [list(rng.integers(10, 99, rng.integers(1, 200))) for _ in range(rng.integers(1, 4))]
        flat = [pair for u in units for pair in builder.add_line(u)] + builder.end_document()
        assert [t for a, b in flat for t in a + b] == [t for u in units for t in u]
        for a, b in flat:
            _, length, _ = layout(a, b, CLS, SEP, PAD, SEQ_LEN)
            assert a and length <= SEQ_LEN
            lengths.append(length)
        pairs += sum(1 for _, b in flat if b)
        not_last += sum(1 for length in lengths[-len(flat):-1] if length == SEQ_LEN)
    # Full but for a document's last example and the original's 5% of shorter targets.
    assert not_last > 0.9 * (len(lengths) - 300) * 0.95
    assert 0.8 < pairs / len(lengths) < 0.95


def _one_line_documents(n, words, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, rng.integers(20, 400))) for _ in range(n)]


def test_build_keeps_every_token_of_a_one_document_per_line_corpus(corpus, tmp_path):
    """The fault the original has on such corpora (a post past its first ~128 tokens lost): with the
    default packing the examples hold every token read, counted in the manifest and printed."""
    root, docs, tok = corpus
    words = sorted({w for doc in docs for line in doc for w in line.split()})
    lines = _one_line_documents(200, words, 1)
    (tmp_path / "posts.txt").write_text("\n\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "electra_jax.cli", "build-data", "--input",
                          str(tmp_path / "posts.txt"), "--tokenizer", str(root / "tok"), "--out",
                          str(tmp_path / "o"), "--seq-len", str(SEQ_LEN), "--shards", "2", "--workers", "1",
                          "--eval-fraction", "0"], capture_output=True, text=True, check=True)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    total = sum(len(tok.encode(line, add_special_tokens=False).ids) for line in lines)
    assert manifest["tokens"] == {"input": total, "in_examples": total, "dropped": 0, "kept_fraction": 1.0}
    assert f"{total:,} read, {total:,} in examples (100.00%), 0 dropped" in out.stdout
    got = read_examples(str(tmp_path / "o"))
    specials = np.isin(got["input_ids"], [CLS, SEP, PAD])
    expected = collections.Counter(t for line in lines for t in tok.encode(line, add_special_tokens=False).ids)
    assert collections.Counter(got["input_ids"][~specials].tolist()) == expected
    two = manifest["splits"]["train"]["two_segment"] / manifest["splits"]["train"]["examples"]
    assert 0.8 < two < 0.95  # the original's 90% pairs, where its own packing here makes almost none
    original = _build(root, tmp_path / "orig", inputs=[str(tmp_path / "posts.txt")], packing="original")
    assert original["tokens"]["kept_fraction"] < 0.5 and original["tokens"]["dropped"] > 0


def test_each_hosts_stream_is_a_fair_sample_of_the_corpus_from_its_first_batch(tmp_path):
    """Two sources in two files, 1:3 in size, read by 2 hosts with a shuffle buffer far smaller than the
    data (as on a real corpus): the first 5% of each host's stream holds each source in its share of
    the whole build, within 4 binomial standard deviations. (Dealt in input order, the first 5% was all
    the first file.)"""
    from electra_jax.data.reader import train_dataset

    small = [f"alpha{k}" for k in range(8)]
    large = [f"beta{k}" for k in range(8)]
    docs_a = _one_line_documents(300, small, 2)
    docs_b = _one_line_documents(900, large, 3)
    (tmp_path / "a.txt").write_text("\n\n".join(docs_a))
    (tmp_path / "b.txt").write_text("\n\n".join(docs_b))
    tok = train_tokenizer(docs_a + docs_b, vocab_size=200, min_frequency=1)
    save_tokenizer(tok, str(tmp_path / "tok"))
    alpha = [tok.token_to_id(w) for w in small]
    assert None not in alpha
    build(BuildArgs(tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "o"), seq_len=SEQ_LEN, shards=8,
                    inputs=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], progress=False))
    everything = read_examples(str(tmp_path / "o"))["input_ids"]
    share = np.isin(everything, alpha).any(1).mean()
    assert 0.2 < share < 0.3
    for host in (0, 1):
        per_host = len(everything) // 2
        n = per_host // 20 // 16 * 16
        ds = train_dataset(str(tmp_path / "o"), 16, seed=0, process_index=host, process_count=2,
                           shuffle_buffer=64)
        first = np.concatenate([b["input_ids"] for b in ds.take(n // 16).as_numpy_iterator()])
        got = np.isin(first, alpha).any(1).mean()
        assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / n), (host, got, share, n)


def test_json_lines_input(corpus, tmp_path):
    root, docs, tok = corpus
    rows = [{"id": i, "text": "\n".join(doc)} for i, doc in enumerate(docs)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = _build(root, tmp_path / "j", inputs=[str(tmp_path / "c.jsonl")])
    total = sum(len(tok.encode(line, add_special_tokens=False).ids) for doc in docs for line in doc)
    assert manifest["input"]["documents"] == len(docs) and manifest["tokens"]["in_examples"] == total
    with pytest.raises(DataError, match=r"c.jsonl:\d+: no string field 'body'.*--text-key"):
        _build(root, tmp_path / "k", inputs=[str(tmp_path / "c.jsonl")], text_key="body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:2: not a JSON object"):
        _build(root, tmp_path / "b", inputs=[str(bad)])
    assert not (tmp_path / "b").exists()  # nothing half-written
