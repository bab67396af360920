"""Our logits against transformers' PyTorch ELECTRA classes loaded from our mapped weights."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from electra_jax import config as config_lib
from electra_jax.hf import (HFFormatError, _entries, from_hf_state_dict, hf_config, save_pretrained,
                            spec_from_hf_config, to_hf_state_dict)
from electra_jax.model import Electra, init_params, unstack_layers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from electra_jax.bench.peer import named_parameters, original_adam_step, torch_electra  # noqa: E402


def _spec(tiny_config, embedding_size):
    c = tiny_config
    c.model.embedding_size = embedding_size
    c.model.vocab_size = 300
    return config_lib.model_spec(c)


def _inputs(seed=0, batch=3, seq_len=12, vocab=300):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, seq_len)).astype(np.int32)
    seg = np.zeros_like(ids)
    seg[:, seq_len // 2:] = 1
    mask = np.ones_like(ids)
    mask[0, -4:] = 0  # padding in one row
    return ids, seg, mask


@pytest.mark.parametrize("embedding_size,attention,scan", [
    (32, "xla", False), (64, "xla", False),  # != hidden (projection) and == hidden (64)
    (32, "fused", False),  # jax.nn.dot_product_attention (deterministic here, so no dropout question)
    (32, "xla", True),  # scanned layers: exported one by one, in order
])
def test_logits_match_transformers(tiny_config, tmp_path, embedding_size, attention, scan):
    tiny_config.model.update(attention=attention, attention_dropout_rate=0.0, scan_layers=scan)
    spec = _spec(tiny_config, embedding_size)
    model = Electra(spec)
    params = nn.unbox(init_params(model, jax.random.key(embedding_size), 12, 12))
    # Random non-zero biases and LayerNorm params, so a mix-up of any of them would show.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    ids, seg, mask = _inputs()
    positions = np.broadcast_to(np.arange(12), ids.shape)
    ours_gen = np.asarray(model.apply({"params": params}, ids, seg, mask, positions,
                                      method=Electra.generator_logits))
    ours_disc = np.asarray(model.apply({"params": params}, ids, seg, mask,
                                       method=Electra.discriminator_logits))

    for tower, cls, ours in (("discriminator", transformers.ElectraForPreTraining, ours_disc),
                             ("generator", transformers.ElectraForMaskedLM, ours_gen)):
        save_pretrained(params, spec, tower, str(tmp_path / tower))
        hf, info = cls.from_pretrained(str(tmp_path / tower), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        hf.eval()
        with torch.no_grad():
            out = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                     token_type_ids=torch.tensor(seg, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
        real = mask.astype(bool)  # HF computes padded query rows differently; compare real tokens
        np.testing.assert_allclose(ours[real], out[real], atol=1e-5, rtol=1e-5)
    if embedding_size != spec.discriminator.hidden_size:
        assert "electra.embeddings_project.weight" in to_hf_state_dict(params, spec, "discriminator")


def test_round_trip_and_scanned_layout(tiny_config):
    spec = _spec(tiny_config, 32)
    params = nn.unbox(init_params(Electra(spec), jax.random.key(0), 8, 4))
    for tower in ("discriminator", "generator"):
        back = from_hf_state_dict(to_hf_state_dict(params, spec, tower), spec, tower)
        # Every tensor of the tower and the shared embeddings comes back (and each equals the original).
        assert sorted(back) == sorted(["embeddings", tower])
        assert len(jax.tree.leaves(back)) == len(jax.tree.leaves([params["embeddings"], params[tower]]))
        for path, leaf in jax.tree_util.tree_leaves_with_path(back):
            expected = params
            for k in path:
                expected = expected[k.key]
            np.testing.assert_array_equal(leaf, expected)
    scanned_spec = dataclasses.replace(spec, scan_layers=True)
    scanned = nn.unbox(init_params(Electra(scanned_spec), jax.random.key(0), 8, 4))
    sd = to_hf_state_dict(scanned, scanned_spec, "discriminator")
    stacked = scanned["discriminator"]["encoder"]["layers"]
    for i in range(spec.discriminator.num_layers):  # layer i of the stack is HF's layer i
        np.testing.assert_array_equal(sd[f"electra.encoder.layer.{i}.attention.self.query.weight"],
                                      np.asarray(stacked["attention"]["query"]["kernel"][i]).reshape(64, 64).T)
        np.testing.assert_array_equal(sd[f"electra.encoder.layer.{i}.output.LayerNorm.bias"],
                                      np.asarray(stacked["output_layer_norm"]["bias"][i]))
    # Unstacking gives exactly the unrolled layers (no more: JAX clamps an index past the end), also for
    # a tree with one tower (the mlm objective's).
    unrolled = unstack_layers(scanned)
    assert sorted(unrolled["discriminator"]["encoder"]) == ["embeddings_project", "layer_0", "layer_1"]
    np.testing.assert_array_equal(unrolled["discriminator"]["encoder"]["layer_1"]["output"]["kernel"],
                                  stacked["output"]["kernel"][1])
    one_tower = unstack_layers({"embeddings": scanned["embeddings"], "generator": scanned["generator"]})
    assert sorted(one_tower) == ["embeddings", "generator"]
    assert sorted(one_tower["generator"]["encoder"]) == ["layer_0", "layer_1"]  # 32 wide: no projection
    for tower in ("discriminator", "generator"):
        back = spec_from_hf_config(hf_config(spec, tower))
        assert back.discriminator == getattr(spec, tower)
        assert (back.vocab_size, back.embedding_size) == (spec.vocab_size, spec.embedding_size)
    with pytest.raises(HFFormatError, match="lacks"):
        from_hf_state_dict({}, spec, "generator")
    # Four tensors missing: their count and the first three, in the order of the model.
    gone = ["generator_lm_head.bias", "electra.embeddings.token_type_embeddings.weight",
            "electra.embeddings.LayerNorm.bias", "electra.embeddings.position_embeddings.weight"]
    partial = {k: v for k, v in to_hf_state_dict(params, spec, "generator").items() if k not in gone}
    with pytest.raises(HFFormatError) as refused:
        from_hf_state_dict(partial, spec, "generator")
    assert str(refused.value) == ("the generator lacks 4 of its tensors, e.g. ['electra.embeddings.position_embeddings"
                                  ".weight', 'electra.embeddings.token_type_embeddings.weight', "
                                  "'electra.embeddings.LayerNorm.bias']")
    # Shapes are checked both ways: weights larger or smaller than the config says are refused.
    sd = to_hf_state_dict(params, spec, "discriminator")
    for intermediate in (128, 512):
        other = dataclasses.replace(spec, discriminator=dataclasses.replace(spec.discriminator,
                                                                            intermediate_size=intermediate))
        expected = jax.eval_shape(lambda: nn.unbox(init_params(Electra(other), jax.random.key(0), 8, 4)))
        with pytest.raises(HFFormatError, match=rf"intermediate.dense.weight \(256, 64\), expected \({intermediate}, 64\)") as refused:
            from_hf_state_dict(sd, other, "discriminator", expected)
        # 2 layers x (intermediate weight and bias, output weight) = 6 wrong; the first 4 are named.
        assert str(refused.value).startswith("6 discriminator tensors have the wrong shape: ")
        assert str(refused.value).count(", expected (") == 4
    # Sizes above 256 are distinct int objects in CPython: equal sizes must still mean no projection.
    wide = dataclasses.replace(spec, embedding_size=int("384"),
                               discriminator=dataclasses.replace(spec.discriminator, hidden_size=int("384")))
    wide_config = hf_config(wide, "discriminator")
    assert wide_config["embedding_size"] == wide_config["hidden_size"] == 384
    assert not any("embeddings_project" in key for _, key, _ in _entries(wide, "discriminator"))


def test_export_and_read_back_through_gfile(tiny_config, tmp_path, monkeypatch):
    """A remote OUT (an in-memory filesystem stands in for gs://) gets the same files as a local one,
    config.json uploaded last, and `read_pretrained` / `load_tokenizer` read them back from there."""
    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.fs import host_tf
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.hf import export_model, read_pretrained

    spec = _spec(tiny_config, 32)
    params = nn.unbox(init_params(Electra(spec), jax.random.key(0), 8, 4))
    gfile = host_tf().io.gfile
    uploads, copy = [], gfile.copy
    monkeypatch.setattr(gfile, "copy", lambda src, dst, *a, **k: (uploads.append(dst), copy(src, dst, *a, **k)))
    listdir = os.listdir  # config.json listed first, so that only the export's own ordering puts it last
    monkeypatch.setattr(os, "listdir", lambda path: sorted(listdir(path), key=lambda n: n != "config.json"))
    remote = export_model(params, spec, "discriminator", "ram://export-test/disc", SAMPLE_TOKENIZER, "card")
    monkeypatch.undo()
    # config.json last: an upload cut short leaves no config.json, so from_pretrained refuses it.
    assert [u.rsplit("/", 1)[1] for u in uploads][-1] == "config.json" and len(uploads) >= 4
    assert all(u.startswith("ram://export-test/disc/") for u in uploads)
    local = export_model(params, spec, "discriminator", str(tmp_path / "disc"), SAMPLE_TOKENIZER, "card")
    assert sorted(gfile.listdir(remote)) == sorted(p.name for p in (tmp_path / "disc").iterdir())
    config, weights = read_pretrained(remote)
    local_config, local_weights = read_pretrained(local)
    assert config == local_config
    expected = to_hf_state_dict(params, spec, "discriminator")
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(weights[name], value)
    assert load_tokenizer(remote + "/tokenizer.json").to_str() == load_tokenizer(local).to_str()
    with pytest.raises(HFFormatError, match="no config.json"):
        read_pretrained("ram://export-test/nothing-here")


def _torch_electra(params, spec):
    """transformers' classes holding our weights (shared embeddings, tied LM head), in eval mode."""
    gen, disc = torch_electra(spec, params=params)
    return disc.eval(), gen.eval()  # no dropout


def _torch_loss(disc, gen, masked, corrupted, is_fake, segment_ids, input_mask, objective):
    """The ELECTRA loss computed by transformers' classes from our masking and our samples:
    gen_weight x weighted MLM cross-entropy over the slots + disc_weight x BCE over real tokens."""
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
    seg, mask = t(segment_ids), t(input_mask)
    logits = gen(input_ids=t(masked.input_ids), token_type_ids=seg, attention_mask=mask).logits
    slots = torch.take_along_dim(logits, t(masked.positions)[..., None], dim=1)  # [B, N, V]
    nll = -torch.log_softmax(slots, -1).gather(-1, t(masked.original_ids)[..., None])[..., 0]
    w = torch.tensor(np.asarray(masked.weights), dtype=torch.float32)
    disc_logits = disc(input_ids=t(corrupted), token_type_ids=seg, attention_mask=mask).logits
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        disc_logits, torch.tensor(np.asarray(is_fake), dtype=torch.float32), reduction="none")
    m = mask.float()
    return (objective.gen_weight * (w * nll).sum() / (w.sum() + 1e-6)
            + objective.disc_weight * (bce * m).sum() / (m.sum() + 1e-6))


@pytest.mark.parametrize("shape", [
    {},  # the tiny preset: 2 layers x 64, embeddings 32, generator 1/2
    {"hidden_size": 48, "num_heads": 3, "num_layers": 3, "intermediate_size": 96, "embedding_size": 40},
])
@pytest.mark.slow
def test_gradients_of_the_electra_loss_match_pytorch(shape):
    """d(MLM + 50 x disc)/d(every parameter), dropout off, with our masking and our sampled tokens fed
    to both, against torch.autograd through transformers' classes (shared embeddings, tied LM head)."""
    import jax.numpy as jnp

    from electra_jax.objective import forward, replace_tokens

    config = config_lib.load_config("tiny", ["--config.data.seq_len=24", "--config.model.vocab_size=300"])
    config.model.update(shape)
    spec, objective = config_lib.model_spec(config), config_lib.objective_spec(config)
    model = Electra(spec)

    @jax.jit  # (eager Flax init is slow on the CPU)
    def make_params(key):
        params = nn.unbox(init_params(model, key, 24, 4))
        leaves, tree = jax.tree.flatten(params)  # non-zero biases and LayerNorm params: mix-ups would show
        keys = jax.random.split(jax.random.key(1), len(leaves))
        return jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    params = make_params(jax.random.key(0))
    ids, seg, mask = _inputs(seq_len=24)
    ids[:, 0], ids[0, 19] = 2, 3  # [CLS], a [SEP] before the padding
    batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg), "input_mask": jnp.asarray(mask)}
    rng = jax.random.key(7)

    f = jax.jit(lambda p: forward(p, batch, rng, model=model, spec=objective, deterministic=True))(params)
    corrupted, is_fake = replace_tokens(batch["input_ids"], f.masked.positions, f.masked.weights, f.sampled)
    assert int(jnp.sum(f.masked.weights)) > 0 and bool(jnp.any(is_fake))
    loss_fn = lambda p: forward(p, batch, rng, model=model, spec=objective, deterministic=True,
                                masked=f.masked).loss
    ours_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)

    disc, gen = _torch_electra(jax.tree.map(np.asarray, params), spec)
    theirs_loss = _torch_loss(disc, gen, f.masked, corrupted, is_fake, seg, mask, objective)
    theirs_loss.backward()
    np.testing.assert_allclose(float(ours_loss), float(theirs_loss.detach()), rtol=1e-5)

    grads = jax.tree.map(np.asarray, grads)
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in jax.tree.leaves(grads)))
    worst = 0.0
    for tower, torch_model in (("discriminator", disc), ("generator", gen)):
        torch_grads = {name: p.grad.numpy() for name, p in torch_model.named_parameters()}
        for name, ours in to_hf_state_dict(grads, spec, tower).items():
            theirs = torch_grads[name]
            if np.linalg.norm(theirs) < 1e-6 * total:  # zero in exact arithmetic (the key biases:
                assert np.linalg.norm(ours) < 1e-5 * total, (tower, name)  # softmax ignores them)
                continue
            err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
            worst = max(worst, err)
            assert err <= 1e-4, (tower, name, err)
    print(f"max relative gradient difference over tensors: {worst:.2e}")


@pytest.mark.parametrize("shape", [
    {},
    {"hidden_size": 48, "num_heads": 3, "num_layers": 3, "intermediate_size": 96, "embedding_size": 40},
])
@pytest.mark.slow
def test_thirty_training_steps_match_pytorch(kjv64, shape):
    """Our objective and optimizer against transformers' classes and the original's Adam written in
    PyTorch, 30 steps on real batches (dropout off; each step's masks and samples are ours, fed to
    both). fp32 round-off (~1e-7 per operation) grows over the steps: measured, losses within 4e-7
    relative and parameters within 2e-6 absolute (of ~0.02); the bounds (1e-5, 2e-5) leave 10-25x."""
    import jax.numpy as jnp
    import optax

    from electra_jax.data.reader import read_examples
    from electra_jax.objective import forward, replace_tokens
    from electra_jax.optim import make_optimizer

    steps, batch_size = 30, 8
    config = config_lib.load_config("tiny", [
        f"--config.num_train_steps={steps}", "--config.optim.warmup_steps=5", "--config.model.dropout_rate=0",
        "--config.model.attention_dropout_rate=0"])
    config.model.update(shape)
    spec, objective = config_lib.model_spec(config), config_lib.objective_spec(config)
    model = Electra(spec)
    params = jax.jit(lambda k: nn.unbox(init_params(model, k, 64, 4)))(jax.random.key(0))
    tx, _ = make_optimizer(config)
    opt = tx.init(params)

    @jax.jit
    def train_step(params, opt, batch, rng):
        (loss, f), grads = jax.value_and_grad(
            lambda p: (lambda f: (f.loss, f))(forward(p, batch, rng, model=model, spec=objective,
                                                      deterministic=True)), has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        corrupted, is_fake = replace_tokens(batch["input_ids"], f.masked.positions, f.masked.weights, f.sampled)
        return optax.apply_updates(params, updates), opt, loss, f.masked, corrupted, is_fake

    disc, gen = _torch_electra(jax.tree.map(np.asarray, params), spec)
    torch_params = named_parameters(gen, disc)
    moments = {}
    data = read_examples(kjv64)
    ours_losses, theirs_losses = [], []
    for step in range(steps):
        rows = slice(step * batch_size, (step + 1) * batch_size)
        batch = {k: jnp.asarray(v[rows]) for k, v in data.items()}
        params, opt, loss, masked, corrupted, is_fake = train_step(params, opt, batch,
                                                                   jax.random.fold_in(jax.random.key(3), step))
        ours_losses.append(float(loss))

        theirs = _torch_loss(disc, gen, masked, corrupted, is_fake, batch["segment_ids"], batch["input_mask"],
                             objective)
        theirs.backward()
        theirs_losses.append(float(theirs.detach()))
        original_adam_step(torch_params, moments, step, config.optim.learning_rate, steps,
                                 config.optim.warmup_steps)

    np.testing.assert_allclose(ours_losses, theirs_losses, rtol=1e-5)
    assert ours_losses[-1] < ours_losses[0]  # it trained
    final = jax.tree.map(np.asarray, params)
    worst = 0.0
    for tower, torch_model in (("discriminator", disc), ("generator", gen)):
        state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
        for name, ours in to_hf_state_dict(final, spec, tower).items():
            worst = max(worst, float(np.max(np.abs(ours - state[name]))))
            np.testing.assert_allclose(ours, state[name], rtol=1e-4, atol=2e-5, err_msg=f"{tower} {name}")
    print(f"max |loss difference| / loss: {max(abs(a - b) / b for a, b in zip(ours_losses, theirs_losses)):.1e}, "
          f"max |parameter difference|: {worst:.1e}")


def test_hf_configs_of_a_pair_are_checked_and_exports_are_laid_out(tiny_config, tmp_path):
    """`model_fields_from_hf` accepts the pair electra-jax writes and refuses a non-GELU model and a
    generator it would not derive; `export_pretrained` writes both towers for ELECTRA and one marked
    `mlm` model for the BERT objective; a bfloat16 export says so in its config."""
    import json

    import ml_dtypes

    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.hf import MLM_MARK, export_pretrained, model_fields_from_hf

    spec = config_lib.model_spec(tiny_config)
    disc, gen = hf_config(spec, "discriminator"), hf_config(spec, "generator")
    fields = model_fields_from_hf(disc, gen)
    assert (fields["hidden_size"], fields["generator_hidden_fraction"]) == (64, 0.5)
    # As read from config.json files (strings json made, not the literals hf_config wrote).
    assert model_fields_from_hf(json.loads(json.dumps(disc)), json.loads(json.dumps(gen))) == fields
    for act in ("relu", "elu"):  # after and before "gelu" in order
        with pytest.raises(HFFormatError, match=f"hidden_act='{act}'; electra-jax has gelu only"):
            model_fields_from_hf({**disc, "hidden_act": act}, gen)
    with pytest.raises(HFFormatError, match="is not the one electra-jax derives"):
        model_fields_from_hf(disc, {**gen, "num_attention_heads": 2, "intermediate_size": 64})
    for d_vocab, g_vocab in ((2048, 1024), (1024, 2048)):  # either one larger
        with pytest.raises(HFFormatError, match=rf"cannot share embeddings \(vocab_size: discriminator {d_vocab}, "
                           rf"generator {g_vocab}\)"):
            model_fields_from_hf({**disc, "vocab_size": d_vocab}, {**gen, "vocab_size": g_vocab})

    params = nn.unbox(init_params(Electra(spec), jax.random.key(0), 8, 4))
    written = export_pretrained(params, spec, str(tmp_path / "electra"), SAMPLE_TOKENIZER, "card",
                                dtype=ml_dtypes.bfloat16)
    assert sorted(written) == ["discriminator", "generator"]
    config = json.loads((tmp_path / "electra" / "generator" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["architectures"] == ["ElectraForMaskedLM"]
    assert MLM_MARK not in config

    tiny_config.objective.name = "".join(["ml", "m"])  # as typed on the command line: not an interned str
    mlm_spec = config_lib.model_spec(tiny_config)
    mlm_params = nn.unbox(init_params(Electra(mlm_spec), jax.random.key(0), 8, 4))
    written = export_pretrained(mlm_params, mlm_spec, str(tmp_path / "bert"), SAMPLE_TOKENIZER, "card")
    assert sorted(written) == ["mlm"] and os.listdir(tmp_path / "bert") == ["mlm"]
    config = json.loads((tmp_path / "bert" / "mlm" / "config.json").read_text())
    assert config[MLM_MARK] == "mlm" and config["hidden_size"] == 64 and config["dtype"] == "float32"


@pytest.mark.parametrize("kind,pooling,head,hf_class", [
    ("sequence_classifier", "cls", "hf", "ElectraForSequenceClassification"),
    ("token_classifier", "tokens", "paper", "ElectraForTokenClassification"),
])
def test_fine_tuned_heads_export_exactly(tiny_config, tmp_path, kind, pooling, head, hf_class):
    """Every weight of a classifier's head is mapped: transformers loads the export with no missing or
    unexpected keys and computes our logits (the heads' weights perturbed, so none is left at init)."""
    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.hf import export_model
    from electra_jax.model import Classifier

    spec = _spec(tiny_config, 32)
    ids, seg, mask = _inputs(3)
    model = Classifier(spec, 3, pooling, head)
    params = nn.unbox(model.init({"params": jax.random.key(0)}, ids, seg, mask)["params"])
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32), params)
    out = export_model(params, spec, kind, str(tmp_path / kind), SAMPLE_TOKENIZER, "test",
                       extra_config={"architectures": [hf_class], "num_labels": 3})
    hf, info = getattr(transformers, hf_class).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = np.asarray(model.apply({"params": params}, ids, seg, mask, True))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids).long(), token_type_ids=torch.tensor(seg).long(),
                    attention_mask=torch.tensor(mask).long()).logits.numpy()
    if pooling == "tokens":
        ours, theirs = ours[mask > 0], theirs[mask > 0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_pytorch_bin_that_unpickles_objects_is_refused(tmp_path):
    """A legacy pytorch_model.bin is read with torch's weights-only unpickler: a global reference (here
    `print`, harmless; in an attack, a callable run while unpickling) is refused, never resolved."""
    import json
    import pickle

    from electra_jax.hf import read_pretrained

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra"}))
    torch.save({"w": torch.zeros(2), "payload": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_pretrained(str(tmp_path))
    torch.save({"w": torch.ones(2, dtype=torch.float16)}, tmp_path / "pytorch_model.bin")
    config, state = read_pretrained(str(tmp_path))
    assert state["w"].dtype == np.float32 and state["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])  # before and after "electra" in order
def test_a_model_of_another_type_is_refused(tmp_path, model_type):
    import json

    from electra_jax.hf import read_pretrained

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(HFFormatError, match=f"config.json: model_type is '{model_type}', not 'electra'"):
        read_pretrained(str(tmp_path))


def test_a_pytorch_bin_without_torch_installed_says_what_to_do(tmp_path, monkeypatch):
    import json
    import sys

    from electra_jax.hf import read_pretrained

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(HFFormatError, match="reading .bin weights needs torch; install it or convert the model to safetensors"):
        read_pretrained(str(tmp_path))


def test_detect_gives_transformers_probabilities_in_float32(tiny_config, tmp_path, capsys):
    # detect used to run in the presets' bfloat16 (0.5084 printed where transformers gives 0.50853).
    from electra_jax.cli import main
    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.hf import export_pretrained

    spec = config_lib.model_spec(tiny_config)
    params = nn.unbox(init_params(Electra(spec), jax.random.key(0), 16, 4))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))  # away from p = 0.5 everywhere
    params = jax.tree.unflatten(tree, [np.asarray(x + 0.05 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)])
    export_pretrained(params, spec, str(tmp_path / "hf"), SAMPLE_TOKENIZER, "random tiny", pad_token_id=0)
    model = str(tmp_path / "hf" / "discriminator")
    text = ["and", "the", "lord", "spake", "unto", "moses", "saying"]
    capsys.readouterr()
    assert main(["detect", "--model", model, "--json", *text]) == 0
    ours = [row["p_replaced"] for row in json.loads(capsys.readouterr().out)]

    ids = load_tokenizer(SAMPLE_TOKENIZER).encode(" ".join(text)).ids
    hf = transformers.ElectraForPreTraining.from_pretrained(model).eval()
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0].numpy()
    expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert np.ptp(expected) > 0.05
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    # Past the model's positions the score would be of clamped positions: refused, naming the limit.
    assert main(["detect", "--model", model, *(["word"] * 600)]) == 2
    assert "reads at most" in capsys.readouterr().err
