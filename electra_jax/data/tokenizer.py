"""Uncased BERT-style WordPiece tokenizers (Hugging Face `tokenizers`, Rust): train, save, load.

A saved directory holds `tokenizer.json`, `tokenizer_config.json` and `vocab.txt`, so both
`transformers.AutoTokenizer.from_pretrained(dir)` (offline) and a BERT-era tool can read it. Wherever a
tokenizer is asked for, an existing Hugging Face tokenizer directory or a BERT `vocab.txt` (file, or a
directory holding only it) works too; vocab.txt files are read as uncased, like Google's ELECTRA vocab.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterable

import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors, trainers

from electra_jax.errors import UserError
from electra_jax.fs import host_tf

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in vocabularies we train


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be used; the message names the path and what to do."""


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _bert_pipeline(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _with_post_processor(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    limit_alphabet: int = 1000) -> tokenizers.Tokenizer:
    """Train an uncased WordPiece vocabulary with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""
    tok = _bert_pipeline(tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]")))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS),
                                        limit_alphabet=limit_alphabet, continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return _with_post_processor(tok)


def save_tokenizer(tok: tokenizers.Tokenizer, out_dir: str, model_max_length: int = 512) -> None:
    """Write a directory that AutoTokenizer loads offline (tokenizer.json + config) plus vocab.txt."""
    from transformers import BertTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    hf = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                           pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                           do_lower_case=True, model_max_length=model_max_length)
    hf.save_pretrained(out_dir)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
    """A Rust tokenizer from an HF tokenizer directory, a directory with vocab.txt, a vocab.txt, or a
    tokenizer.json (local or gs://, as `build-data` stores beside the examples)."""
    if path.endswith(".json"):
        gfile = host_tf().io.gfile
        if not gfile.exists(path):
            raise TokenizerError(f"{path}: no such tokenizer file")
        with gfile.GFile(path) as f:
            tok = tokenizers.Tokenizer.from_str(f.read())
    elif os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        elif os.path.isfile(os.path.join(path, "vocab.txt")):
            tok = _from_vocab(os.path.join(path, "vocab.txt"))
        else:
            raise TokenizerError(f"{path}: no tokenizer.json or vocab.txt in this directory; train one "
                                 "with `electra-jax tokenizer` or pass a BERT vocab.txt")
    elif os.path.isfile(path):
        tok = _from_vocab(path)
    else:
        raise TokenizerError(f"{path}: no such tokenizer file or directory")
    special_ids(tok, path)  # fail now, not in the middle of a build
    return untruncated(tok)


def untruncated(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """`tok` with any saved truncation and padding turned off. A tokenizer.json exported from a
    pipeline often carries `truncation: {max_length: 512}`; every caller here windows, cuts or packs the
    ids itself (and counts what it cuts), so a saved setting would only cut text silently."""
    tok.no_truncation()
    tok.no_padding()
    return tok


def _from_vocab(vocab_file: str) -> tokenizers.Tokenizer:
    try:
        with open(vocab_file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError:
        raise TokenizerError(f"{vocab_file}: not a UTF-8 vocab.txt (one token per line)") from None
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    tok = _bert_pipeline(tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]")))
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    return _with_post_processor(tok) if {"[CLS]", "[SEP]"} <= vocab.keys() else tok


def special_ids(tok: tokenizers.Tokenizer, source: str = "tokenizer") -> SpecialIds:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise TokenizerError(f"{source}: the vocabulary lacks {', '.join(missing)}; ELECTRA needs "
                             f"all of {', '.join(SPECIAL_TOKENS)}")
    return SpecialIds(*(ids[t] for t in SPECIAL_TOKENS))


def fingerprint(tok: tokenizers.Tokenizer) -> str:
    """A short hash of the whole tokenizer (vocabulary, normaliser, ...), stored in data manifests."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
