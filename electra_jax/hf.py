"""Our parameter tree <-> Hugging Face ELECTRA state dicts, in pure numpy (no torch import).

`ElectraForPreTraining` (discriminator) and `ElectraForMaskedLM` (generator) names, as in
shared/docs/hf_format.md. One table of (our path, HF key, layout) drives both directions, so export and
import cannot drift apart. The shared embeddings are written into both models.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from electra_jax.config import EncoderSpec, ModelSpec
from electra_jax.errors import UserError
from electra_jax.fs import host_tf, is_remote
from electra_jax.model import unstack_layers

TOWERS = ("discriminator", "generator")
# config.json field of a model pretrained with the "mlm" objective (an encoder to fine-tune, unlike
# an ELECTRA generator, which is also an ElectraForMaskedLM).
MLM_MARK = "electra_jax_objective"
# Our model kinds -> the transformers class that loads them. The classifiers are fine-tuned
# discriminators: same embeddings and encoder names, a task head instead of the RTD head.
ARCHITECTURES = {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM",
                 "sequence_classifier": "ElectraForSequenceClassification",
                 "token_classifier": "ElectraForTokenClassification",
                 "question_answerer": "ElectraForQuestionAnswering"}

# Layouts: how one of our arrays becomes an HF tensor.
COPY, DENSE, QKV, QKV_BIAS, ATTN_OUT = "copy", "dense", "qkv", "qkv_bias", "attn_out"
VOCAB = "vocab"  # rows per vocabulary entry: our padding rows (model.vocab_multiple) are not exported


def _entries(spec: ModelSpec, kind: str) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """(our path, HF key, layout) for every tensor of one model (a key of ARCHITECTURES)."""
    tower = "generator" if kind == "generator" else "discriminator"
    enc: EncoderSpec = getattr(spec, tower)
    emb = ("embeddings",)
    yield emb + ("word_embeddings",), "electra.embeddings.word_embeddings.weight", VOCAB
    yield emb + ("position_embeddings",), "electra.embeddings.position_embeddings.weight", COPY
    yield emb + ("token_type_embeddings",), "electra.embeddings.token_type_embeddings.weight", COPY
    yield emb + ("layer_norm", "scale"), "electra.embeddings.LayerNorm.weight", COPY
    yield emb + ("layer_norm", "bias"), "electra.embeddings.LayerNorm.bias", COPY
    encoder = (tower, "encoder")
    if spec.embedding_size != enc.hidden_size:
        yield encoder + ("embeddings_project", "kernel"), "electra.embeddings_project.weight", DENSE
        yield encoder + ("embeddings_project", "bias"), "electra.embeddings_project.bias", COPY
    for i in range(enc.num_layers):
        ours, hf = encoder + (f"layer_{i}",), f"electra.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            yield ours + ("attention", name, "kernel"), hf + f"attention.self.{name}.weight", QKV
            yield ours + ("attention", name, "bias"), hf + f"attention.self.{name}.bias", QKV_BIAS
        yield ours + ("attention", "output", "kernel"), hf + "attention.output.dense.weight", ATTN_OUT
        yield ours + ("attention", "output", "bias"), hf + "attention.output.dense.bias", COPY
        for ln, hf_ln in (("attention_layer_norm", "attention.output.LayerNorm"),
                          ("output_layer_norm", "output.LayerNorm")):
            yield ours + (ln, "scale"), hf + f"{hf_ln}.weight", COPY
            yield ours + (ln, "bias"), hf + f"{hf_ln}.bias", COPY
        for dense, hf_dense in (("intermediate", "intermediate.dense"), ("output", "output.dense")):
            yield ours + (dense, "kernel"), hf + f"{hf_dense}.weight", DENSE
            yield ours + (dense, "bias"), hf + f"{hf_dense}.bias", COPY
    if kind == "sequence_classifier":  # the "hf" head: ElectraClassificationHead
        for dense in ("dense", "out_proj"):
            yield ("head", dense, "kernel"), f"classifier.{dense}.weight", DENSE
            yield ("head", dense, "bias"), f"classifier.{dense}.bias", COPY
    elif kind == "token_classifier":
        yield ("head", "out_proj", "kernel"), "classifier.weight", DENSE
        yield ("head", "out_proj", "bias"), "classifier.bias", COPY
    elif kind == "question_answerer":  # the "hf" span head
        yield ("head", "qa_outputs", "kernel"), "qa_outputs.weight", DENSE
        yield ("head", "qa_outputs", "bias"), "qa_outputs.bias", COPY
    elif kind == "discriminator":
        for dense in ("dense", "dense_prediction"):
            yield (tower, dense, "kernel"), f"discriminator_predictions.{dense}.weight", DENSE
            yield (tower, dense, "bias"), f"discriminator_predictions.{dense}.bias", COPY
    else:
        yield (tower, "dense", "kernel"), "generator_predictions.dense.weight", DENSE
        yield (tower, "dense", "bias"), "generator_predictions.dense.bias", COPY
        yield (tower, "layer_norm", "scale"), "generator_predictions.LayerNorm.weight", COPY
        yield (tower, "layer_norm", "bias"), "generator_predictions.LayerNorm.bias", COPY
        # generator_lm_head.weight is tied to the word embeddings; HF re-ties it when it is absent.
        yield (tower, "output_bias"), "generator_lm_head.bias", VOCAB


def _to_hf(x: np.ndarray, layout: str, vocab_size: int = 0) -> np.ndarray:
    if layout == VOCAB:
        return x[:vocab_size]
    if layout == DENSE:
        return x.T
    if layout == QKV:  # [H, heads, head_dim] -> [heads * head_dim, H]
        return x.reshape(x.shape[0], -1).T
    if layout == QKV_BIAS:
        return x.reshape(-1)
    if layout == ATTN_OUT:  # [heads, head_dim, H] -> [H, heads * head_dim]
        return x.reshape(-1, x.shape[-1]).T
    return x


def _from_hf(w: np.ndarray, layout: str, enc: EncoderSpec, vocab_rows: int = 0) -> np.ndarray:
    if layout == VOCAB:  # zero padding rows (never looked up; their logits are masked)
        return np.concatenate([w, np.zeros((vocab_rows - len(w), *w.shape[1:]), w.dtype)]) if vocab_rows > len(w) else w
    if layout == DENSE:
        return w.T
    if layout == QKV:
        return w.T.reshape(w.shape[1], enc.num_heads, enc.head_dim)
    if layout == QKV_BIAS:
        return w.reshape(enc.num_heads, enc.head_dim)
    if layout == ATTN_OUT:
        return w.T.reshape(enc.num_heads, enc.head_dim, w.shape[0])
    return w


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_hf_state_dict(params, spec: ModelSpec, tower: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """One model's HF state dict (numpy, contiguous, `dtype`) from our params (scanned or not)."""
    if tower not in ARCHITECTURES:
        raise ValueError(f"tower must be one of {list(ARCHITECTURES)}, got {tower!r}")
    params = unstack_layers(params)
    return {key: np.ascontiguousarray(_to_hf(np.asarray(_get(params, path), np.float32), layout,
                                             spec.vocab_size)).astype(dtype)
            for path, key, layout in _entries(spec, tower)}


class HFFormatError(UserError, ValueError):
    """A Hugging Face directory that is not the ELECTRA model expected; the message says which part."""


def from_hf_state_dict(state_dict: dict, spec: ModelSpec, tower: str, expected=None) -> dict:
    """Our (unrolled) params for the embeddings and one tower from an HF state dict.

    `expected` (our unrolled param tree, arrays or ShapeDtypeStructs) checks every tensor's shape first.
    Raises HFFormatError naming the missing keys or the tensors of the wrong shape.
    """
    enc = spec.generator if tower == "generator" else spec.discriminator  # the classifiers are discriminators
    entries = list(_entries(spec, tower))
    missing = [key for _, key, _ in entries if key not in state_dict]
    if missing:
        raise HFFormatError(f"the {tower} lacks {len(missing)} of its tensors, e.g. {missing[:3]}")
    if expected is not None:
        wrong = []
        for path, key, layout in entries:
            want = _to_hf(np.empty(_get(expected, path).shape, np.int8), layout, spec.vocab_size).shape
            if tuple(np.shape(state_dict[key])) != want:
                wrong.append(f"{key} {tuple(np.shape(state_dict[key]))}, expected {want}")
        if wrong:
            raise HFFormatError(f"{len(wrong)} {tower} tensors have the wrong shape: {'; '.join(wrong[:4])}")
    params: dict = {}
    for path, key, layout in entries:
        _set(params, path, _from_hf(np.asarray(state_dict[key], np.float32), layout, enc, spec.vocab_rows))
    return params


def hf_config(spec: ModelSpec, tower: str, pad_token_id: int = 0) -> dict:
    """The `config.json` of one model, as `transformers.ElectraConfig` reads it."""
    enc = spec.generator if tower == "generator" else spec.discriminator
    return {
        "architectures": [ARCHITECTURES[tower]],
        "model_type": "electra",
        "vocab_size": spec.vocab_size,
        "embedding_size": spec.embedding_size,
        "hidden_size": enc.hidden_size,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": enc.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": spec.dropout_rate,
        "attention_probs_dropout_prob": spec.attention_dropout_rate,
        "max_position_embeddings": spec.max_position_embeddings,
        "type_vocab_size": spec.type_vocab_size,
        "initializer_range": spec.initializer_range,
        "layer_norm_eps": spec.layer_norm_eps,
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


# Fields both towers of one ELECTRA must agree on: they share the embedding tables.
SHARED_HF_FIELDS = ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size")


def read_pretrained(model_dir: str) -> tuple[dict, dict]:
    """(config.json, numpy state dict) of an HF ELECTRA directory (model.safetensors, or
    pytorch_model.bin when torch is installed); local or remote (gs://, read through tf.io.gfile)."""
    import json
    import os
    import tempfile

    if is_remote(model_dir):
        gfile = host_tf().io.gfile
        if not gfile.exists(os.path.join(model_dir, "config.json")):
            raise HFFormatError(f"{model_dir}: no config.json; expected a Hugging Face ELECTRA model "
                                "directory (is the path right and readable with these credentials?)")
        with tempfile.TemporaryDirectory() as local:
            for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
                if gfile.exists(os.path.join(model_dir, name)):
                    gfile.copy(os.path.join(model_dir, name), os.path.join(local, name))
            return read_pretrained(local)

    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise HFFormatError(f"{model_dir}: no config.json; expected a Hugging Face ELECTRA model directory")
    with open(path) as f:
        config = json.load(f)
    if config.get("model_type") != "electra":
        raise HFFormatError(f"{path}: model_type is {config.get('model_type')!r}, not 'electra'")
    weights = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(weights):
        from safetensors.numpy import load_file

        return config, load_file(weights)
    legacy = os.path.join(model_dir, "pytorch_model.bin")
    if os.path.isfile(legacy):
        try:
            import torch
        except ImportError:
            raise HFFormatError(f"{legacy}: reading .bin weights needs torch; install it or convert the "
                                "model to safetensors") from None
        state = torch.load(legacy, map_location="cpu", weights_only=True)
        return config, {k: v.float().numpy() for k, v in state.items()}
    raise HFFormatError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def model_fields_from_hf(discriminator: dict, generator: dict) -> dict:
    """config.model fields for a discriminator/generator pair of HF configs, checked against each other
    and against the generator electra-jax derives (`config.generator_encoder`)."""
    import ml_collections

    from electra_jax.config import generator_encoder

    differ = [f"{k}: discriminator {discriminator.get(k)}, generator {generator.get(k)}"
              for k in SHARED_HF_FIELDS if discriminator.get(k) != generator.get(k)]
    if differ:
        raise HFFormatError(f"the two models cannot share embeddings ({'; '.join(differ)})")
    for name, c in (("discriminator", discriminator), ("generator", generator)):
        if c.get("hidden_act", "gelu") != "gelu":
            raise HFFormatError(f"the {name} uses hidden_act={c['hidden_act']!r}; electra-jax has gelu only")
    kinds = {name: set(c.get("architectures") or []) for name, c in (("discriminator", discriminator),
                                                                      ("generator", generator))}
    if "ElectraForMaskedLM" in kinds["discriminator"] and "ElectraForPreTraining" in kinds["generator"]:
        raise HFFormatError("--discriminator and --generator are swapped: the --discriminator directory holds "
                            "an ElectraForMaskedLM (a generator) and the --generator one an "
                            "ElectraForPreTraining (a discriminator); exchange the two paths")
    for name, wrong in (("discriminator", "ElectraForMaskedLM"), ("generator", "ElectraForPreTraining")):
        if wrong in kinds[name]:
            raise HFFormatError(f"--{name} holds an {wrong}, not an ELECTRA {name}; give the {name} "
                                f"directory (an export writes OUT/discriminator and OUT/generator)")
    d, g = discriminator, generator
    if not kinds["discriminator"] | kinds["generator"] and g["hidden_size"] > d["hidden_size"]:
        raise HFFormatError(f"the --generator ({g['hidden_size']} wide) is wider than the --discriminator "
                            f"({d['hidden_size']}): are the two paths swapped?")
    fields = {
        "vocab_size": d["vocab_size"], "embedding_size": d["embedding_size"],
        "hidden_size": d["hidden_size"], "num_layers": d["num_hidden_layers"],
        "num_heads": d["num_attention_heads"], "intermediate_size": d["intermediate_size"],
        "max_position_embeddings": d["max_position_embeddings"], "type_vocab_size": d["type_vocab_size"],
        "dropout_rate": d["hidden_dropout_prob"], "attention_dropout_rate": d["attention_probs_dropout_prob"],
        "layer_norm_eps": d["layer_norm_eps"], "initializer_range": d["initializer_range"],
        "generator_hidden_fraction": g["hidden_size"] / d["hidden_size"],
        "generator_layers_fraction": g["num_hidden_layers"] / d["num_hidden_layers"],
    }

    derived = generator_encoder(ml_collections.ConfigDict(fields))
    given = EncoderSpec(g["hidden_size"], g["num_hidden_layers"], g["num_attention_heads"],
                        g["intermediate_size"])
    if derived != given:
        raise HFFormatError(f"the generator ({given}) is not the one electra-jax derives from the "
                            f"discriminator and its width ({derived}: 4x FFN, one head per 64 dims)")
    return fields


def spec_from_hf_config(c: dict) -> ModelSpec:
    """The ModelSpec of one exported model (both towers get its encoder; only one is used)."""
    enc = EncoderSpec(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                      c["intermediate_size"])
    return ModelSpec(c["vocab_size"], c["embedding_size"], c["max_position_embeddings"],
                     c["type_vocab_size"], c["hidden_dropout_prob"], c["attention_probs_dropout_prob"],
                     c["layer_norm_eps"], c["initializer_range"], enc, enc)


def save_pretrained(params, spec: ModelSpec, tower: str, out_dir: str, dtype=np.float32,
                    pad_token_id: int = 0, extra_config: dict | None = None) -> None:
    """Write `config.json` + `model.safetensors` that `<Architecture>.from_pretrained(out_dir)` loads;
    `extra_config` adds fields (num_labels, id2label, ... for the classifiers)."""
    import json
    import os

    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = {**hf_config(spec, tower, pad_token_id), **(extra_config or {})}
    config["dtype"] = np.dtype(dtype).name if np.dtype(dtype) != np.float32 else "float32"
    save_file(to_hf_state_dict(params, spec, tower, dtype), os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def export_model(params, spec: ModelSpec, kind: str, out_dir: str, tokenizer_path: str, card: str,
                 dtype=np.float32, pad_token_id: int = 0, extra_config: dict | None = None) -> str:
    """Write one HF model directory: weights, config.json, tokenizer files, README.md.

    Locally it is written under a temporary name and renamed when complete, so an interrupted export
    never looks finished. A remote OUT (gs://) has no atomic directory rename: the files are written
    locally, then uploaded with config.json last, so a cut-short upload has no config.json and
    `from_pretrained` refuses it."""
    import os
    import shutil
    import tempfile

    from electra_jax.data.tokenizer import load_tokenizer, save_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)

    def write(directory):
        save_pretrained(params, spec, kind, directory, dtype, pad_token_id, extra_config)
        save_tokenizer(tokenizer, directory, model_max_length=spec.max_position_embeddings)
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write(f"# ELECTRA {kind} ({ARCHITECTURES[kind]})\n\n{card}\n")

    if is_remote(out_dir):
        gfile = host_tf().io.gfile
        with tempfile.TemporaryDirectory() as local:
            write(local)
            if gfile.exists(out_dir):
                gfile.rmtree(out_dir)
            gfile.makedirs(out_dir)
            names = sorted(os.listdir(local), key=lambda n: n == "config.json")
            for name in names:
                gfile.copy(os.path.join(local, name), os.path.join(out_dir, name), overwrite=True)
        return out_dir

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def export_pretrained(params, spec: ModelSpec, out_dir: str, tokenizer_path: str, card: str,
                      dtype=np.float32, pad_token_id: int = 0) -> dict[str, str]:
    """Write OUT/discriminator and OUT/generator (each as `export_model`; a uniform generator has no
    weights, so no OUT/generator); for the "mlm" objective
    OUT/mlm, the full-size ElectraForMaskedLM, marked in its config.json so that fine-tuning takes it."""
    import os

    if spec.objective == "mlm":
        return {"mlm": export_model(params, spec, "generator", os.path.join(out_dir, "mlm"), tokenizer_path,
                                    card, dtype, pad_token_id, extra_config={MLM_MARK: "mlm"})}
    return {tower: export_model(params, spec, tower, os.path.join(out_dir, tower), tokenizer_path, card,
                                dtype, pad_token_id)
            for tower in TOWERS if tower == "discriminator" or not spec.uniform_generator}
