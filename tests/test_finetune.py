"""Fine-tuning: heads and losses against numpy, layer-wise learning rates against the formula, metrics
against known values, a tiny model that learns a task, HF export parity, and the bad-input errors."""

import csv
import gzip
import json
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from electra_jax.config import finetune_config, load_config, model_spec
from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
from electra_jax.finetune import metrics
from electra_jax.finetune.run import classifier_loss, finetune, layer_depths
from electra_jax.finetune.tasks import GLUE, TaskError, encode, label_names, read_tfds, task_spec
from electra_jax.model import Classifier, frozen_features
from electra_jax.optim import layerwise_lr_decay


def _spec():
    return model_spec(load_config(str(ROOT / "configs" / "tiny.py")))


def _batch(rng, n=6, s=16, vocab=2048):
    ids = rng.integers(5, vocab, (n, s)).astype(np.int32)
    mask = (np.arange(s)[None] < rng.integers(4, s + 1, (n, 1))).astype(np.int32)
    ids[:, 0] = 2
    return {"input_ids": ids * mask, "input_mask": mask, "segment_ids": np.zeros_like(ids),
            "weights": np.array([1, 1, 1, 1, 0, 1], np.float32)}


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("kind,pooling", [("classification", "cls"), ("classification", "mean"),
                                          ("regression", "cls"), ("tagging", "tokens")])
def test_head_and_loss_equal_numpy(kind, pooling):
    spec, rng = _spec(), np.random.default_rng(0)
    outputs = 1 if kind == "regression" else 3
    model = Classifier(spec, outputs, pooling, "paper")
    batch = _batch(rng)
    params = nn.unbox(model.init(jax.random.key(0), batch["input_ids"], batch["segment_ids"],
                                 batch["input_mask"])["params"])
    params = jax.tree.map(np.asarray, params)
    if kind == "regression":
        batch["labels"] = rng.normal(size=6).astype(np.float32)
    elif kind == "classification":
        batch["labels"] = rng.integers(0, 3, 6).astype(np.int32)
    else:
        batch["labels"] = rng.integers(0, 3, (6, 16)).astype(np.int32)
        batch["label_weights"] = (rng.random((6, 16)) < 0.5).astype(np.float32) * batch["input_mask"]
    loss, pairs = classifier_loss(params, batch, jax.random.key(1), model=model, kind=kind, deterministic=True)

    # The encoder's output, captured; the head and loss below are plain numpy.
    _, state = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                           True, capture_intermediates=lambda m, _: m.name == "discriminator",
                           mutable=["intermediates"])
    hidden = np.asarray(state["intermediates"]["discriminator"]["__call__"][0], np.float64)
    m = batch["input_mask"][..., None]
    x = {"tokens": hidden, "cls": hidden[:, 0], "mean": (hidden * m).sum(1) / m.sum(1)}[pooling]
    # The linear probe's features are the same pooled vectors, read from the backbone alone.
    features = frozen_features(spec, params, batch["input_ids"], batch["segment_ids"], batch["input_mask"], pooling)
    np.testing.assert_allclose(np.asarray(features), x, rtol=1e-5, atol=1e-6)
    w_out, b_out = params["head"]["out_proj"]["kernel"], params["head"]["out_proj"]["bias"]
    logits = x @ w_out + b_out
    w = batch["weights"]
    if kind == "regression":
        per = (logits[:, 0] - batch["labels"]) ** 2
    else:
        if kind == "tagging":
            w = w[:, None] * batch["label_weights"]
        per = -np.take_along_axis(_log_softmax(logits), batch["labels"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (w * per).sum(), rtol=1e-5)  # the original's reduce_sum
    mean, _ = classifier_loss(params, batch, jax.random.key(1), model=model, kind=kind, deterministic=True,
                              reduction="mean")
    np.testing.assert_allclose(float(mean), (w * per).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pairs["loss"]), [(w * per).sum(), w.sum()], rtol=1e-5)


@pytest.mark.parametrize("convention,top", [("original", 4), ("consecutive", 3)])
def test_layerwise_learning_rates_follow_the_formula(convention, top):
    spec = _spec()  # 2 layers
    model = Classifier(spec, 2, "cls", "hf")
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(0), ids, ids, jnp.ones_like(ids))["params"]))
    decay = 0.8
    tx = layerwise_lr_decay(lambda p: layer_depths(p, 2, convention), decay)
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params))
    # lr * d^(top - depth): embeddings and their projection depth 0, layer_i depth i + 1, head depth top.
    expect = {"embeddings/word_embeddings": decay ** top,
              "discriminator/encoder/embeddings_project/kernel": decay ** top,
              "discriminator/encoder/layer_0/attention/query/kernel": decay ** (top - 1),
              "discriminator/encoder/layer_1/output_layer_norm/scale": decay ** (top - 2),
              "head/out_proj/kernel": 1.0, "head/dense/bias": 1.0}
    flat = {"/".join(str(k.key) for k in path): np.unique(np.asarray(v))
            for path, v in jax.tree_util.tree_leaves_with_path(updates)}
    for name, factor in expect.items():
        np.testing.assert_allclose(flat[name], [factor], rtol=1e-6, err_msg=name)


def test_the_fine_tuning_optimizer_applies_the_layerwise_rates():
    """The optimizer a fine-tuning run builds (classifier_setup), one step on a uniform gradient: every
    entry's update is -lr x u x decay^(top - depth), u the same for all, so update / head's update =
    decay^(top - depth) (original convention: 2 layers, head at depth 4)."""
    config = load_config(str(ROOT / "configs" / "finetune" / "tiny.py"), [
        "--config.optim.warmup_steps=0", "--config.optim.weight_decay=0", "--config.num_train_steps=100",
        "--config.task.max_len=8", "--config.head=paper"])
    config.model.update(vocab_size=2048, embedding_size=32, hidden_size=64, num_layers=2, num_heads=2,
                        intermediate_size=256, max_position_embeddings=128)
    from electra_jax.finetune.run import classifier_setup

    s = classifier_setup(config, 2, "classification", jax.devices()[:1])
    params = s.init(jax.random.key(0)).params
    updates, _ = s.tx.update(jax.tree.map(jnp.ones_like, params), s.tx.init(params), params)
    flat = {"/".join(str(k.key) for k in path): np.unique(np.asarray(v))
            for path, v in jax.tree_util.tree_leaves_with_path(updates)}
    head = flat["head/out_proj/kernel"]
    assert len(head) == 1 and head[0] < 0
    for name, depth in (("embeddings/word_embeddings", 0), ("discriminator/encoder/layer_0/intermediate/kernel", 1),
                        ("discriminator/encoder/layer_1/attention/query/bias", 2),
                        ("discriminator/encoder/embeddings_project/kernel", 0), ("head/out_proj/bias", 4)):
        np.testing.assert_allclose(flat[name] / head[0], [0.8 ** (4 - depth)], rtol=1e-5, err_msg=name)


def test_tagging_labels_each_words_first_sub_token():
    """Worked by hand from the sample tokenizer: [CLS] and | nebuchad ##ne ##zzar | said |
    un ##be ##li ##e ##v ##abl ##y [SEP]: a label (and weight 1) on and, nebuchad, said, un only."""
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.finetune.tasks import Examples

    words = ["And", "Nebuchadnezzar", "said", "unbelievably"]
    examples = Examples("hand", [words], None, [["O", "B-NAME", "O", "O"]])
    out = encode(examples, task_spec("tagging"), load_tokenizer(SAMPLE_TOKENIZER), 16, ["O", "B-NAME"], 0)
    np.testing.assert_array_equal(out["input_ids"][0], [2, 70, 1882, 1525, 1872, 175, 104, 451, 549, 41, 61, 1442,
                                                        48, 3, 0, 0])
    np.testing.assert_array_equal(out["label_weights"][0], [0, 1, 1, 0, 0, 1, 1] + [0] * 9)
    np.testing.assert_array_equal(out["labels"][0][[1, 2, 5, 6]], [0, 1, 0, 0])


def test_layerwise_learning_rates_in_the_scanned_layout():
    """With model.scan_layers the layers are one stacked tree: slice i must get layer i's rate."""
    import dataclasses

    spec = dataclasses.replace(_spec(), scan_layers=True)
    model = Classifier(spec, 2, "cls", "hf")
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(0), ids, ids, jnp.ones_like(ids))["params"]))
    decay, top = 0.8, 4
    tx = layerwise_lr_decay(lambda p: layer_depths(p, 2, "original"), decay)
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params))
    flat = {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(updates)}
    query = flat["discriminator/encoder/layers/attention/query/kernel"]
    assert query.shape[0] == 2
    for i in range(2):
        np.testing.assert_allclose(np.unique(query[i]), [decay ** (top - 1 - i)], rtol=1e-6)
    np.testing.assert_allclose(np.unique(flat["embeddings/word_embeddings"]), [decay ** top], rtol=1e-6)
    np.testing.assert_allclose(np.unique(flat["head/out_proj/kernel"]), [1.0])


def test_metrics_equal_known_values():
    gold, pred = np.array([1, 1, 1, 0]), np.array([1, 0, 1, 1])
    assert metrics.matthews_corrcoef(pred, gold) == pytest.approx(-1 / 3)  # scikit-learn's doc example
    assert metrics.matthews_corrcoef(np.ones(4), gold) == 0.0
    assert metrics.binary_f1(np.array([1, 0, 0, 1, 1]), np.array([1, 1, 0, 0, 1])) == pytest.approx(2 / 3)
    assert metrics.accuracy(pred, gold) == 0.5
    # scipy's documented examples (ties in the second)
    assert metrics.pearson(np.array([1, 2, 3, 4, 5.]), np.array([10, 9, 2.5, 6, 4])) == pytest.approx(
        -0.7426106572325057)
    assert metrics.spearman(np.array([1, 2, 3, 4, 5.]), np.array([5, 6, 7, 8, 7.])) == pytest.approx(
        0.8207826816681233)
    # conlleval: a span of the wrong type is a miss; I- after O opens a span (IOB1)
    gold_tags = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"]]
    pred_tags = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]
    assert metrics.entities(gold_tags[1]) == {("ORG", 0, 2)}
    assert metrics.entity_f1(pred_tags, gold_tags) == pytest.approx(2 * 2 / (3 + 3))


# ----------------------------------------------------------------------------- end to end


def _kjv(n):
    lines = [line.strip() for line in gzip.open(SAMPLE_CORPUS, "rt") if line.strip()]
    random.Random(0).shuffle(lines)
    return lines[:n]


def _write_csv(path, rows, header=("sentence", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _lord_or_other(tmp_path, n_train, n_dev, *overrides):
    """Sample-corpus verses labelled by whether they mention "lord": (rows, a finetune/tiny config with the
    hf head reading train.csv and dev.csv from tmp_path)."""
    rows = [(s, "lord" if " lord" in s.lower() else "other") for s in _kjv(n_train + n_dev)]
    _write_csv(tmp_path / "train.csv", rows[:n_train])
    _write_csv(tmp_path / "dev.csv", rows[n_train:])
    return rows, load_config(str(ROOT / "configs" / "finetune" / "tiny.py"), [
        "--config.task.name=classification", f"--config.task.train={tmp_path / 'train.csv'}",
        f"--config.task.dev={tmp_path / 'dev.csv'}", "--config.head=hf", *overrides])


@pytest.mark.slow
def test_tiny_model_learns_a_task_and_exports_exactly(random_discriminator, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.cli import main

    rows, config = _lord_or_other(tmp_path, 700, 200, "--config.task.max_len=48", "--config.num_epochs=10")
    # From scratch some seeds never leave the majority class (why the paper reports medians).
    results = finetune(config, random_discriminator, str(tmp_path / "run"), seeds=3,
                       devices=jax.devices()[:1], progress=False)
    base_rate = np.mean([label == "other" for _, label in rows[700:]])
    assert [r["seed"] for r in results["runs"]] == [0, 1, 2]
    assert results["median"]["dev/accuracy"] > 0.95 > base_rate + 0.1, results
    assert json.loads((tmp_path / "run" / "results.json").read_text())["median"] == results["median"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["num_train_steps"] == 10 * 22 and saved["optim"]["warmup_steps"] == 22  # 700 rows / 32; 10%

    assert main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.ElectraForSequenceClassification.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.id2label == {0: "lord", 1: "other"}
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = [s for s, _ in rows[700:708]]
    enc = tok(texts, padding=True, return_tensors="np")
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v).long() for k, v in enc.items()}).logits.numpy()
    best = max(results["runs"], key=lambda r: r["dev/accuracy"])  # what export picks
    ours = _our_logits(tmp_path / "run", best, "classification", enc)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (theirs.argmax(-1) == np.array([0 if " lord" in t.lower() else 1 for t in texts])).mean() > 0.8

    # Mean pooling has no Hugging Face class: such a run is refused at export, not exported wrong.
    saved["pooling"] = "mean"
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf_mean")]) == 2
    assert "pooling 'mean' has no Hugging Face class" in capsys.readouterr().err
    assert not (tmp_path / "hf_mean").exists()


def test_fine_tuning_starts_from_the_init_weights(random_discriminator, tmp_path):
    """At a learning rate of 1e-9 the fine-tuned encoder, exported, is the --init model's encoder."""
    from safetensors.numpy import load_file

    from electra_jax.finetune.run import export_finetuned

    _, config = _lord_or_other(tmp_path, 32, 8, "--config.task.max_len=32", "--config.num_epochs=1",
                               "--config.optim.learning_rate=1e-9")
    finetune(config, random_discriminator, str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)
    out = export_finetuned(str(tmp_path / "run"), str(tmp_path / "hf"))
    start = load_file(f"{random_discriminator}/model.safetensors")
    tuned = load_file(f"{out}/model.safetensors")
    encoder = [k for k in start if k.startswith("electra.")]
    assert len(encoder) > 20
    for name in encoder:
        np.testing.assert_allclose(tuned[name], start[name], atol=1e-7, err_msg=name)

    # --random-init: the same shapes, other weights.
    finetune(config, random_discriminator, str(tmp_path / "scratch"), random_init=True, devices=jax.devices()[:1],
             progress=False)
    scratch = load_file(f"{export_finetuned(str(tmp_path / 'scratch'), str(tmp_path / 'hf2'))}/model.safetensors")
    assert all(scratch[k].shape == start[k].shape for k in encoder)
    assert not np.allclose(scratch["electra.encoder.layer.0.attention.self.query.weight"],
                           start["electra.encoder.layer.0.attention.self.query.weight"], atol=1e-3)


def test_the_recipe_is_picked_by_the_init_models_hidden_size(tmp_path, capsys):
    import argparse

    from electra_jax.cli import _finetune_config_path

    for hidden, preset in ((64, "finetune/tiny"), (256, "finetune/small"), (768, "finetune/base"),
                           (1024, "finetune/large")):
        (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden}))  # an HF directory
        assert _finetune_config_path(argparse.Namespace(config=None, init=str(tmp_path))) == preset
        (tmp_path / "config.json").write_text(json.dumps({"model": {"hidden_size": hidden}}))  # a workdir
        assert _finetune_config_path(argparse.Namespace(config=None, init=f"{tmp_path}:3")) == preset
    assert _finetune_config_path(argparse.Namespace(config="mine.py", init=str(tmp_path))) == "mine.py"
    for preset, (lr, layerwise) in (("small", (3e-4, 0.8)), ("base", (1e-4, 0.8)), ("large", (5e-5, 0.9))):
        c = load_config(f"finetune/{preset}")  # the paper's Table 7 (electra_reference.md)
        assert (c.optim.learning_rate, c.optim.layerwise_lr_decay, c.optim.warmup_fraction) == (lr, layerwise, 0.1)


def _our_logits(workdir, run, kind, enc):
    """Our classifier's outputs from the checkpoint of one fine-tuning run (a results.json entry)."""
    from electra_jax.checkpoint import Checkpoints
    from electra_jax.finetune.run import classifier_setup
    from electra_jax.config import load_workdir_config

    s = classifier_setup(load_workdir_config(str(workdir)), 2, kind, jax.devices()[:1])
    checkpoints = Checkpoints(str(workdir / f"seed_{run['seed']}"), async_save=False)
    params = checkpoints.restore(run["step"], s.abstract_state()).params
    return np.asarray(s.model.apply({"params": params}, enc["input_ids"].astype(np.int32),
                                    enc["token_type_ids"].astype(np.int32),
                                    enc["attention_mask"].astype(np.int32), True))


def test_token_classifier_exports_exactly(random_discriminator, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.finetune.run import export_finetuned

    names = {"god", "lord", "moses", "israel", "david"}
    sentences = [s.replace(",", " ,").split()[:16] for s in _kjv(300)]  # 16 words fit in 48 tokens
    gold = [["B-NAME" if w.lower() in names else "O" for w in words] for words in sentences]
    with open(tmp_path / "train.conll", "w") as f:
        for words, tags in zip(sentences, gold):
            f.writelines(f"{w} {t}\n" for w, t in zip(words, tags))
            f.write("\n")
    config = load_config(str(ROOT / "configs" / "finetune" / "tiny.py"), [
        "--config.task.name=tagging", f"--config.task.train={tmp_path / 'train.conll'}",
        f"--config.task.dev={tmp_path / 'train.conll'}", "--config.task.max_len=48", "--config.num_epochs=3"])
    results = finetune(config, random_discriminator, str(tmp_path / "run"), devices=jax.devices()[:1],
                       progress=False)
    out = export_finetuned(str(tmp_path / "run"), str(tmp_path / "hf"))
    hf = transformers.ElectraForTokenClassification.from_pretrained(out)
    assert hf.config.id2label == {0: "O", 1: "B-NAME"}
    tok = transformers.AutoTokenizer.from_pretrained(out)

    # The reported entity F1, recomputed from the exported model's tags on each word's first piece:
    # with single-word entities, F1 over the (sentence, word) positions tagged B-NAME.
    enc = tok(sentences, is_split_into_words=True, padding=True, truncation=True, max_length=48,
              return_tensors="pt")
    with torch.no_grad():
        tags = hf(**enc).logits.argmax(-1).numpy()
    predicted, truth = set(), {(i, j) for i, t in enumerate(gold) for j, tag in enumerate(t) if tag == "B-NAME"}
    for i in range(len(sentences)):
        seen = set()
        for t, word in enumerate(enc.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                if tags[i, t] == 1:
                    predicted.add((i, word))
    hits = len(predicted & truth)
    f1 = 2 * hits / (len(predicted) + len(truth))
    assert results["median"]["dev/entity_f1"] == pytest.approx(f1, abs=1e-6)
    assert f1 > 0.8, f1  # it learned: names are whole words here
    enc = tok(["And Moses said unto the LORD"], return_tensors="np")
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v).long() for k, v in enc.items()}).logits.numpy()
    ours = _our_logits(tmp_path / "run", results["runs"][0], "tagging", enc)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=1e-5)


def test_pairs_are_truncated_longest_first_as_the_original():
    """google-research/electra `_truncate_seq_pair`: pop from the longer side, from B on ties."""
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.finetune.tasks import Examples, truncate_pair

    assert truncate_pair(list(range(8)), [8, 9, 10], 7) == ([0, 1, 2, 3], [8, 9, 10])
    assert truncate_pair(list(range(5)), list(range(5, 10)), 7) == ([0, 1, 2, 3], [5, 6, 7])
    assert truncate_pair(list(range(6)), list(range(6, 12)), 8) == ([0, 1, 2, 3], [6, 7, 8, 9])
    assert truncate_pair([0, 1], list(range(2, 9)), 6) == ([0, 1], [2, 3, 4, 5])  # only the longer B pops
    tok = load_tokenizer(SAMPLE_TOKENIZER)
    words = "and the lord god said".split()
    word_ids = [tok.token_to_id(w) for w in words]
    out = encode(Examples("hand", [" ".join(words)], [" ".join(reversed(words))], ["x"]),
                 task_spec("classification"), tok, 10, ["x"], 0)
    # 5 + 5 tokens into 10 - 3: B, A, B lose one each -> A 4, B 3.
    np.testing.assert_array_equal(out["input_ids"][0], [2, *word_ids[:4], 3, *word_ids[::-1][:3], 3])
    np.testing.assert_array_equal(out["segment_ids"][0], [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(out["input_mask"][0], [1] * 10)
    short = encode(Examples("hand", ["god"], ["lord"], ["x"]), task_spec("classification"), tok, 8, ["x"], 0)
    np.testing.assert_array_equal(short["input_ids"][0], [2, word_ids[3], 3, word_ids[2], 3, 0, 0, 0])
    np.testing.assert_array_equal(short["segment_ids"][0], [0, 0, 0, 1, 1, 0, 0, 0])


def test_glue_through_tfds_reads_and_encodes_pairs():
    import tensorflow_datasets as tfds

    from electra_jax.data.tokenizer import load_tokenizer

    with tfds.testing.mock_data(num_examples=5):
        with pytest.raises(TaskError, match="not prepared .* pass --download"):
            read_tfds(GLUE["rte"], "train", None, download=False)
        train = read_tfds(GLUE["mnli"], "train", None, download=True)
        dev = read_tfds(GLUE["mnli"], "validation_mismatched", None, download=True)
    labels = label_names(train, GLUE["mnli"])
    assert set(train.labels) <= {"entailment", "neutral", "contradiction"} and len(dev.text_a) == 5
    arrays = encode(dev, GLUE["mnli"], load_tokenizer(SAMPLE_TOKENIZER), 24,
                    sorted({*labels, *dev.labels}), 0)
    ids, seg = arrays["input_ids"], arrays["segment_ids"]
    assert ids.shape == (5, 24) and (ids[:, 0] == 2).all()  # [CLS]
    for row, s in zip(ids, seg):  # [CLS] A [SEP] B [SEP]: segment 1 from after the first [SEP]
        seps = np.flatnonzero(row == 3)
        assert len(seps) == 2 and (s[: seps[0] + 1] == 0).all() and (s[seps[0] + 1: seps[1] + 1] == 1).all()

    # STS-B's 0-5 similarity is trained as the original's (x - 0) / 5.
    with tfds.testing.mock_data(num_examples=4):
        stsb = read_tfds(GLUE["stsb"], "validation", None, download=True)
        raw = [float(r["label"]) for r in tfds.as_numpy(tfds.load("glue/stsb", split="validation"))]
    np.testing.assert_allclose(stsb.labels, np.array(raw) / 5, rtol=1e-6)


def test_bad_input_gets_a_clear_error(random_discriminator, tmp_path, capsys):
    from electra_jax.cli import main

    with pytest.raises(TaskError, match="unknown task 'colaa'; known: cola, sst2"):
        task_spec("colaa")
    _write_csv(tmp_path / "train.csv", [("a b", "x"), ("c d", "y")], header=("text", "label"))
    _write_csv(tmp_path / "dev.csv", [("a b", "x"), ("c d", "z")], header=("text", "label"))
    _write_csv(tmp_path / "empty.csv", [], header=("text", "label"))
    cfg = finetune_config()
    cfg.model.dtype = "float32"

    def run(**task):
        c = cfg.copy_and_resolve_references()
        c.task.update(name="classification", **task)
        return finetune(c, random_discriminator, str(tmp_path / "w"), devices=jax.devices()[:1], progress=False)

    with pytest.raises(TaskError, match=r"no column 'sentence'; the columns are \['text', 'label'\]"):
        run(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "dev.csv"))
    with pytest.raises(TaskError, match=r"dev.csv: example 2 has label 'z', which the training data does not"):
        run(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "dev.csv"), text_a="text")
    with pytest.raises(TaskError, match="empty.csv: the split is empty"):
        run(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "empty.csv"), text_a="text")
    for max_len in (3, 129):
        with pytest.raises(TaskError, match=f"task.max_len {max_len}: must be at least 4 .* at most the model's 128"):
            run(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "train.csv"), text_a="text", max_len=max_len)

    generator = random_discriminator.replace("discriminator", "generator")
    base = ["finetune", "--task", "classification", "--train", str(tmp_path / "train.csv"), "--dev",
            str(tmp_path / "dev.csv"), "--workdir", str(tmp_path / "w2"), "--config.task.text_a=text"]
    capsys.readouterr()
    for argv, message in ((base + ["--init", generator], "is an ELECTRA generator"),
                          (base + ["--init", random_discriminator, "--config.model_selection=best",
                                   "--config.eval_every_epoch=False"],
                           "eval_every_epoch: False needs model_selection=final"),
                          (base + ["--init", random_discriminator, "--config.pooling=max"],
                           "pooling: 'max' is not one of ('cls', 'mean')"),
                          (base + ["--init", str(tmp_path)], "neither a Hugging Face ELECTRA discriminator directory"),
                          (["finetune", "--init", random_discriminator, "--task", "nope", "--workdir",
                            str(tmp_path / "w3")], "unknown task 'nope'")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("electra-jax: error: ") and message in err, err
    assert not (tmp_path / "w2").exists()  # refused before anything was written


def test_mrpc_and_stsb_train_on_both_orders_of_each_pair(monkeypatch):
    """The original's double_unordered: MRPC's 3,668 training pairs become 7,336, the swapped copies
    after the originals; only the training split, only the symmetric tasks, and it can be turned off."""
    import electra_jax.finetune.run as run_lib
    from electra_jax.finetune.tasks import Examples

    def fake_tfds(spec, split, data_dir, download=False):
        return Examples(f"{spec.name}:{split}", ["a1", "a2"], ["b1", "b2"], ["0", "1"])

    monkeypatch.setattr(run_lib, "read_tfds", fake_tfds)
    config = finetune_config()
    for task, doubled in (("mrpc", True), ("stsb", True), ("rte", False), ("qqp", False)):
        config.task.name = task
        _, train, evals = run_lib.load_task(config)
        if doubled:
            assert (train.text_a, train.text_b, train.labels) == (
                ["a1", "a2", "b1", "b2"], ["b1", "b2", "a1", "a2"], ["0", "1", "0", "1"]), task
        else:
            assert train.text_a == ["a1", "a2"], task
        assert all(e.text_a == ["a1", "a2"] for e in evals.values())
    config.task.name, config.task.double_unordered = "mrpc", False
    assert run_lib.load_task(config)[1].text_a == ["a1", "a2"]


@pytest.mark.parametrize("selection", ["final", "best"])
def test_the_reported_epoch_is_the_final_one_unless_best_is_asked_for(random_discriminator, tmp_path, selection):
    """The paper reports the final epoch (median over seeds); best-dev-epoch selection is optional and
    labelled, with both medians in results.json; the checkpoint kept is the reported epoch's."""
    from electra_jax.checkpoint import Checkpoints

    rows = [(s, "lord" if " lord" in s.lower() else "other") for s in _kjv(160)]
    _write_csv(tmp_path / "train.csv", rows[:120])
    _write_csv(tmp_path / "dev.csv", rows[120:])
    config = load_config("finetune/tiny", [
        "--config.task.name=classification", f"--config.task.train={tmp_path / 'train.csv'}",
        f"--config.task.dev={tmp_path / 'dev.csv'}", "--config.task.max_len=32", "--config.num_epochs=4",
        f"--config.model_selection={selection}"])
    results = finetune(config, random_discriminator, str(tmp_path / "run"), seeds=1, devices=jax.devices()[:1],
                       progress=False)
    assert results["model_selection"] == selection
    for run, history in zip(results["runs"], results["history"]):
        scores = [h["dev/accuracy"] for h in history]
        assert len(history) == 4
        if selection == "final":
            assert run["epoch"] == 4 and run["dev/accuracy"] == scores[-1]
        else:  # among tied epochs any may be kept: its score is the best
            assert run["dev/accuracy"] == max(scores)
        chosen = history[run["epoch"] - 1]
        assert chosen["dev/accuracy"] == run["dev/accuracy"]
        kept = Checkpoints(str(tmp_path / "run" / f"seed_{run['seed']}"), async_save=False).all_steps()
        assert kept == [chosen["step"]]
    finals = [h[-1]["dev/accuracy"] for h in results["history"]]
    bests = [max(e["dev/accuracy"] for e in h) for h in results["history"]]
    assert results["median_final_epoch"]["dev/accuracy"] == pytest.approx(np.median(finals))
    assert results["median_best_dev_epoch"]["dev/accuracy"] == pytest.approx(np.median(bests))


def test_glue_epochs_are_the_originals():
    """configure_finetuning.py: num_train_epochs 3, and 10 for RTE and STS-B (its "sts")."""
    from electra_jax.finetune.tasks import GLUE

    assert {name: spec.epochs for name, spec in GLUE.items()} == {
        "cola": 3, "sst2": 3, "mrpc": 3, "stsb": 10, "qqp": 3, "mnli": 3, "qnli": 3, "rte": 10}


def test_conll_takes_the_last_column_and_refuses_a_line_without_a_tag(tmp_path):
    from electra_jax.finetune.tasks import read_conll

    good = tmp_path / "ok.conll"
    good.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    examples = read_conll(str(good))
    assert examples.text_a == [["EU", "rejects"], ["Peter"]] and examples.labels == [["B-ORG", "O"], ["B-PER"]]
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(TaskError, match=r"bad.conll:2: expected `token ... tag`, got 'rejects'"):
        read_conll(str(bad))


def test_a_regression_label_that_is_not_a_number_is_a_clear_error(tmp_path):
    from electra_jax.finetune.tasks import read_table

    path = tmp_path / "scores.csv"
    path.write_text("sentence,label\ngood,4.5\nbad,high\n")
    with pytest.raises(TaskError, match=r"scores.csv: 1 bad row\(s\) \(line 3: label 'high' is not a number\)"):
        read_table(str(path), task_spec("regression"))


def test_the_linear_probe_reads_what_the_frozen_features_hold(random_discriminator, tmp_path):
    """pretraining-helps' probe: a logistic regression on a frozen (here random) encoder's mean-pooled
    vectors separates two word lists perfectly, and is wrong on every row when the test labels are swapped."""
    from electra_jax.experiments.pretraining_helps import linear_probe

    rng = random.Random(0)
    words = {"a": "water fire stone river mountain".split(), "b": "king queen prince lord servant".split()}
    rows = [(" ".join(rng.choices(words[label], k=8)), label) for label in "ab" * 60]
    _write_csv(tmp_path / "train.csv", rows[:80], ("text", "label"))
    _write_csv(tmp_path / "test.csv", rows[80:], ("text", "label"))
    _write_csv(tmp_path / "swapped.csv", [(text, "ab"[label == "a"]) for text, label in rows[80:]], ("text", "label"))
    probe = lambda test: linear_probe(random_discriminator, False, str(tmp_path / "train.csv"), str(test), 16)
    assert probe(tmp_path / "test.csv") == 1.0
    assert probe(tmp_path / "swapped.csv") == 0.0


def test_padding_is_trimmed_to_the_longest_row_rounded_to_8():
    from electra_jax.finetune.run import trim_padding

    mask = (np.arange(128)[None] < np.array([[5], [9]])).astype(np.int32)
    data = {"input_ids": mask * 7, "input_mask": mask, "segment_ids": 0 * mask, "label_weights": mask * 1.0,
            "labels": np.array([0, 1])}
    out = trim_padding(data)
    assert {k: v.shape for k, v in out.items()} == {"input_ids": (2, 16), "input_mask": (2, 16),
                                                     "segment_ids": (2, 16), "label_weights": (2, 16),
                                                     "labels": (2,)}
    assert out["input_mask"].sum() == 14 and (out["input_ids"] == data["input_ids"][:, :16]).all()
