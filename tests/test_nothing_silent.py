"""What a new user met in a fresh clone that ended in a wrong result with exit 0, or in a workdir no
rerun could use: each case is reproduced as they met it and checked on the files it leaves (tokenizer
bytes, exported vocabularies, results.json) and the exit code, not only on the message."""

import gzip
import hashlib
import json

import jax
import pytest

from electra_jax.config import load_config
from electra_jax.data import SAMPLE_CORPUS
from electra_jax.data.builder import BuildArgs, build
from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer
from electra_jax.pretrain import TrainingError, pretrain


def _vocab(tokenizer_json) -> dict:
    return json.loads(open(tokenizer_json).read())["model"]["vocab"]


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """Two corpora (the two halves of the sample corpus), each with its own 2,048-piece tokenizer (the
    same size, so ids and sizes alone cannot tell them apart) and its own build."""
    root = tmp_path_factory.mktemp("two")
    with gzip.open(SAMPLE_CORPUS, "rt") as f:
        lines = f.read().splitlines()
    half = len(lines) // 2
    builds = {}
    for name, part in (("a", lines[:half]), ("b", lines[half:])):
        corpus = root / f"{name}.txt"
        corpus.write_text("\n".join(part) + "\n")
        tok = train_tokenizer(part, 2048)
        assert tok.get_vocab_size() == 2048
        save_tokenizer(tok, str(root / f"tok_{name}"))
        build(BuildArgs(tokenizer=str(root / f"tok_{name}"), out=str(root / f"data_{name}"),
                        inputs=[str(corpus)], seq_len=64, shards=2, eval_fraction=0.0, progress=False))
        builds[name] = str(root / f"data_{name}")
    return builds


def _config(data, *overrides):
    return load_config("tiny", [f"--config.data.path={data}", "--config.num_train_steps=4",
                                "--config.train.save_every=2", "--config.train.eval_every=0",
                                "--config.train.async_checkpoints=False", "--config.data.shuffle_buffer=64",
                                *overrides])


def test_resume_on_data_of_another_tokenizer_is_refused_and_each_step_exports_its_own(two_builds, tmp_path):
    """Issue 31.1: resuming with data built by another tokenizer of the same size went on (exit 0),
    replaced the workdir's tokenizer.json, and `export --step` of the earlier step shipped the new
    vocabulary with the old weights."""
    from electra_jax.cli import main

    workdir, one = tmp_path / "run", jax.devices()[:1]
    pretrain(_config(two_builds["a"]), str(workdir), max_steps=2, devices=one, progress=False)
    tokenizer_a = _md5(workdir / "tokenizer.json")
    assert tokenizer_a == _md5(f"{two_builds['a']}/tokenizer.json")

    with pytest.raises(TrainingError, match=r"step 2 was trained with tokenizer [0-9a-f]{16} \(.*run/tokenizer"
                                            r".json\) but .*data_b was built with tokenizer [0-9a-f]{16}; the "
                                            r"vocabularies differ .*--config.data.change_tokenizer=True"):
        pretrain(_config(two_builds["b"]), str(workdir), devices=one, progress=False)
    assert _md5(workdir / "tokenizer.json") == tokenizer_a
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf2")]) == 0
    assert _vocab(tmp_path / "hf2" / "discriminator" / "tokenizer.json") == _vocab(f"{two_builds['a']}/tokenizer.json")

    # asked for: it continues on B's vocabulary, and each checkpoint still exports with its own
    pretrain(_config(two_builds["b"], "--config.data.change_tokenizer=True"), str(workdir), devices=one,
             progress=False)
    assert _md5(workdir / "tokenizer.json") == _md5(f"{two_builds['b']}/tokenizer.json")
    for step, data in ((2, "a"), (4, "b")):
        out = tmp_path / f"hf{step}"
        assert main(["export", "--workdir", str(workdir), "--step", str(step), "--out", str(out)]) == 0
        for tower in ("discriminator", "generator"):
            assert _vocab(out / tower / "tokenizer.json") == _vocab(f"{two_builds[data]}/tokenizer.json"), (step, tower)
