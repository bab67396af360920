"""Tokenizers we train or load give the ids transformers' AutoTokenizer gives."""

import gzip

import pytest

from electra_jax.data import SAMPLE_CORPUS
from electra_jax.data.tokenizer import (SPECIAL_TOKENS, TokenizerError, load_tokenizer, save_tokenizer,
                                        special_ids, train_tokenizer)

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep.",
         "Café naïve ÉLAN [MASK] unknownword123"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(5000), f) if line.strip()]
    tok = train_tokenizer(lines, vocab_size=1000)
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok, str(out))
    return tok, out


def test_special_ids_are_documented(trained):
    tok, _ = trained
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = special_ids(tok)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 1, 2, 3, 4)


def test_autotokenizer_round_trip_gives_identical_ids(trained):
    transformers = pytest.importorskip("transformers")
    tok, out = trained
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1]):
        assert hf(a)["input_ids"] == tok.encode(a).ids
        pair = hf(a, b)
        assert pair["input_ids"] == tok.encode(a, b).ids
        assert pair["token_type_ids"] == tok.encode(a, b).type_ids
    # Uncased BERT: lower case and accents stripped.
    assert hf.convert_ids_to_tokens(hf("Café")["input_ids"])[1:-1] == tok.encode("cafe").tokens[1:-1]
    assert tok.encode("x").ids[0] == 2 and tok.encode("x").ids[-1] == 3  # [CLS] ... [SEP]


def test_vocab_txt_and_directories_load_to_the_same_ids(trained, tmp_path):
    tok, out = trained
    for path in (str(out), str(out / "vocab.txt")):
        loaded = load_tokenizer(path)
        for text in TEXTS:
            assert loaded.encode(text).ids == tok.encode(text).ids
    only_vocab = tmp_path / "bert"
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_text((out / "vocab.txt").read_text())
    assert load_tokenizer(str(only_vocab)).encode(TEXTS[0]).ids == tok.encode(TEXTS[0]).ids


def test_bad_tokenizers_are_refused_by_name(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\nhello\nworld\n")
    with pytest.raises(TokenizerError, match=r"vocab\.txt.*lacks \[CLS\], \[SEP\], \[MASK\]"):
        load_tokenizer(str(bad))
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(str(empty))


def test_shipped_tokenizer_fits_the_tiny_config():
    from conftest import ROOT
    from electra_jax.config import load_config
    from electra_jax.data import SAMPLE_TOKENIZER

    config = load_config(str(ROOT / "configs" / "tiny.py"))
    tok = load_tokenizer(SAMPLE_TOKENIZER)
    ids = special_ids(tok)
    assert tok.get_vocab_size() == config.model.vocab_size
    t = config.tokens
    assert (ids.pad, ids.cls, ids.sep, ids.mask) == (t.pad_id, t.cls_id, t.sep_id, t.mask_id)


def test_a_tokenizer_saved_with_truncation_and_padding_cuts_nothing(tmp_path):
    # tokenizer.json files exported from pipelines often carry truncation (max_length 512) and padding;
    # everything here windows or packs ids itself, so loading one must not cut or pad text silently.
    import json

    from electra_jax.data import SAMPLE_TOKENIZER
    from electra_jax.data.builder import _WORKER, PackSpec, _init_worker
    from electra_jax.finetune import qa

    context = " ".join(TEXTS[:2] * 4)
    saved = load_tokenizer(SAMPLE_TOKENIZER)
    full = saved.encode(context, add_special_tokens=False).ids
    assert len(full) > 40
    saved.enable_truncation(max_length=8)
    saved.enable_padding(length=64)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(saved.to_str())
    alone = saved.encode(context, add_special_tokens=False)  # what the file alone does: cut to 8, pad to 64
    assert len(alone.ids) == 64 and sum(alone.attention_mask) == 8

    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.encode(context, add_special_tokens=False).ids == full
    assert tok.encode("void").ids == load_tokenizer(SAMPLE_TOKENIZER).encode("void").ids  # no padding either
    # Question answering: the windows cover every token of the context.
    squad = {"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "q", "question": "what ?", "answers": [{"text": "void", "answer_start": context.index("void")}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    features = qa.featurize(qa.read_squad(str(tmp_path / "squad.json")), tok, max_len=24, max_query_len=8,
                            doc_stride=8, pad_id=0, training=False)
    covered = {tuple(span) for window in features.offsets for span in window if span[0] >= 0}
    assert len(covered) == len(full)
    # build-data's workers, which get the tokenizer as JSON.
    ids = special_ids(tok)
    _init_worker(PackSpec(tokenizer_json=saved.to_str(), seed=0, seq_len=128, eval_fraction=0.0, cls_id=ids.cls,
                          sep_id=ids.sep, pad_id=ids.pad, id_dtype="uint16"))
    assert _WORKER["tok"].encode(context, add_special_tokens=False).ids == full
