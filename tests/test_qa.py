"""Extractive QA: windows and offsets on hand-made contexts, decoding from hand-set logits, SQuAD's
official metrics on hand-worked cases, the joint head against numpy, export parity with transformers'
ElectraForQuestionAnswering, bad input, and a tiny end-to-end fine-tune."""

import json
import random

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import ROOT
from electra_jax.config import load_config, model_spec
from electra_jax.data import SAMPLE_TOKENIZER
from electra_jax.data.tokenizer import load_tokenizer
from electra_jax.finetune import metrics, qa
from electra_jax.finetune.tasks import TaskError
from electra_jax.model import SpanExtractor


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SAMPLE_TOKENIZER)


def _squad(path, paragraphs):
    """paragraphs: [(context, [(id, question, [(text, start)], is_impossible)])] -> a SQuAD 2.0 file."""
    data = [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q, "is_impossible": imp,
                                "answers": [{"text": t, "answer_start": s} for t, s in answers]}
                               for i, q, answers, imp in qas]} for c, qas in paragraphs]}]
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return str(path)


def _answer(context, text):
    return [(text, context.index(text))]


# ----------------------------------------------------------------------------- windows and offsets


def test_windows_step_by_the_stride_as_the_original():
    # 10 tokens, room for 4, stride 3: starts 0, 3, 6 (6 + 4 reaches the end), as doc_spans in qa_tasks.py.
    assert qa._windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert qa._windows(3, 4, 3) == [(0, 3)]
    assert qa._windows(8, 4, 8) == [(0, 4), (4, 4)]  # the stride never skips past a window's end


def test_max_context_is_the_originals_example():
    # The original's comment: "the man went to the store and bought a gallon of milk", spans A = 0-4,
    # B = 3-7 ("to the store and bought"), C = 6-10: "bought" (7) has its max context in C, "store"
    # (5) in B (2 left, 2 right), "to" (3) in A (3 left, 1 right; in B 0 left).
    best = qa._max_context([(0, 5), (3, 5), (6, 5)], 11)
    assert (best[7], best[5], best[3]) == (2, 1, 0)
    assert list(best) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # 4: 0 right in A, 1 left and 3 right in B
    # A last, shorter window (room 10, stride 6, 11 tokens): 7 is 2 from A's end and 1 from B's start -> A;
    # 8: 1 in A, 2 in B -> B. The 0.01 x length only breaks ties: 6 would be A's either way.
    assert list(qa._max_context([(0, 10), (6, 5)], 11)) == [0] * 8 + [1] * 3


def test_answers_map_to_sub_tokens_through_offsets(tok, tmp_path):
    context = "The garment was scarlet. The city was Babylon."
    path = _squad(tmp_path / "a.json", [(context, [("q1", "What was the garment?", _answer(context, "scarlet"), False),
                                                   ("q2", "What was the number?", [], True)])])
    data = qa.read_squad(path)
    f = qa.featurize(data, tok, max_len=48, max_query_len=64, doc_stride=128, pad_id=0, training=True)
    dev = qa.featurize(data, tok, max_len=48, max_query_len=64, doc_stride=128, pad_id=0, training=False)
    ids = f.arrays["input_ids"][0]
    # [CLS] what was the garment ? [SEP] the garment was sc ##ar ##let . ...: the context starts at 7.
    assert tok.id_to_token(int(ids[0])) == "[CLS]" and tok.id_to_token(int(ids[6])) == "[SEP]"
    assert (f.arrays["start_positions"][0], f.arrays["end_positions"][0]) == (10, 12)
    assert [tok.id_to_token(int(i)) for i in ids[10:13]] == ["sc", "##ar", "##let"]
    assert {k: str(v.dtype) for k, v in f.arrays.items()} == {
        "input_ids": "int32", "input_mask": "int32", "segment_ids": "int32", "start_positions": "int32",
        "end_positions": "int32", "is_impossible": "float32"}
    start, end = dev.offsets[0, 10, 0], dev.offsets[0, 12, 1]
    assert context[start:end] == "scarlet"
    assert (dev.offsets[0, :7] == -1).all() and dev.offsets[0, 7, 0] == 0  # the question has no context offsets
    n_context = len(tok.encode(context, add_special_tokens=False).ids)  # 11: the . city was babylon .
    assert list(f.arrays["segment_ids"][0]) == [0] * 7 + [1] * (n_context + 1) + [0] * (48 - 7 - n_context - 1)
    assert list(f.arrays["input_mask"][0]) == [1] * (7 + n_context + 1) + [0] * (48 - 7 - n_context - 1)
    # The unanswerable question points at [CLS].
    assert (f.arrays["start_positions"][1], f.arrays["end_positions"][1], f.arrays["is_impossible"][1]) == (0, 0, 1)


def test_an_answer_at_the_contexts_first_character_is_trained_on(tok, tmp_path):
    context = "babylon was the city ."
    # Two gold answers: the first is trained on, with its own length (the second only scores).
    path = _squad(tmp_path / "a.json", [(context, [("q", "which place ?", [("babylon", 0), ("babylon was", 0)],
                                                    False)])])
    f = qa.featurize(qa.read_squad(path), tok, 32, 64, 128, 0, training=True)
    first = len(tok.encode("which place ?", add_special_tokens=False).ids) + 2
    assert (f.arrays["start_positions"][0], f.arrays["end_positions"][0]) == (first, first)


def test_answers_no_sub_token_covers_are_counted_and_not_trained_on(tok, tmp_path):
    context = "the city was babylon \u0301 ."  # the tokenizer strips the lone accent: no token covers it
    path = _squad(tmp_path / "a.json", [(context, [("q", "which mark ?", _answer(context, "\u0301"), False),
                                                   ("r", "which place ?", _answer(context, "babylon"), False)])])
    data = qa.read_squad(path)
    assert data.misaligned == []  # the file is right; the tokenizer cannot represent the answer
    f = qa.featurize(data, tok, 32, 64, 128, 0, training=True)
    assert f.counts == {"truncated_questions": 0, "unaligned_answers": 1} and list(f.question) == [1]


def test_a_span_crossing_a_window_edge_is_trained_only_where_it_is_whole(tok, tmp_path):
    context = "and it came to pass that the garment was scarlet and the city was babylon ."
    path = _squad(tmp_path / "a.json", [(context, [("q", "what was the garment ?", _answer(context, "scarlet"), False)])])
    data = qa.read_squad(path)
    q_len = len(tok.encode("what was the garment ?", add_special_tokens=False).ids)  # 5
    # room 6 context tokens per window, stride 4: windows start at tokens 0, 4, 8, 12 of the context;
    # "scarlet" is context tokens 9-11 (sc ##ar ##let): split by the window at 4 (4-9), whole in 8 (8-13).
    f = qa.featurize(data, tok, max_len=q_len + 3 + 6, max_query_len=64, doc_stride=4, pad_id=0, training=True)
    context_tokens = tok.encode(context, add_special_tokens=False).tokens
    assert context_tokens[9:12] == ["sc", "##ar", "##let"]
    first = q_len + 2
    assert list(f.question) == [0] * len(f.question) and len(f.question) == 4
    assert list(f.arrays["start_positions"]) == [0, 0, first + 1, 0]
    assert list(f.arrays["end_positions"]) == [0, 0, first + 3, 0]
    # For decoding: each context token's max-context window, by the original's rule (the most context on
    # the shorter side + 0.01 x the window's length), worked by hand for windows of 6 every 4 over 18
    # tokens, A 0-5, B 4-9, C 8-13, D 12-17: token 4 is 1 from A's right end, 0 from B's left -> A;
    # token 5: 0 in A, 1 in B -> B; 8 -> B (1 vs 0); 9 -> C; 12 -> C; 13 -> D.
    dev = qa.featurize(data, tok, max_len=q_len + 3 + 6, max_query_len=64, doc_stride=4, pad_id=0, training=False)
    assert len(context_tokens) == 18 and len(dev.question) == 4
    windows = [(0, 6), (4, 6), (8, 6), (12, 6)]
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    for w, (start, length) in enumerate(windows):
        got = dev.max_context[w, first:first + length]
        assert list(got) == [expected[start + t] == w for t in range(length)], (w, list(got))
        assert not dev.max_context[w, :first].any() and not dev.max_context[w, first + length:].any()


def test_long_questions_are_truncated_and_counted(tok, tmp_path):
    context = "the city was babylon ."
    long_question = "what " * 30 + "was the city ?"
    path = _squad(tmp_path / "a.json", [(context, [("q", long_question, _answer(context, "babylon"), False)])])
    f = qa.featurize(qa.read_squad(path), tok, max_len=32, max_query_len=8, doc_stride=128, pad_id=0,
                     training=True)
    assert f.counts["truncated_questions"] == 1
    exact = " ".join(["what"] * 8)  # exactly max_query_len tokens: kept whole, not counted
    path = _squad(tmp_path / "b.json", [(context, [("q", exact, _answer(context, "babylon"), False)])])
    f = qa.featurize(qa.read_squad(path), tok, max_len=32, max_query_len=8, doc_stride=128, pad_id=0, training=True)
    assert f.counts["truncated_questions"] == 0 and list(f.arrays["segment_ids"][0]).index(1) == 10
    assert list(f.arrays["segment_ids"][0]).index(1) == 10  # [CLS] + 8 question tokens + [SEP]


# ----------------------------------------------------------------------------- decoding


def _features(offsets, max_context=None, question=None):
    """Windows laid out as [CLS] question [SEP] context [SEP]: segment 1 from the context to the end."""
    offsets = np.asarray(offsets, np.int32)
    f, s = offsets.shape[:2]
    segment_ids = np.zeros((f, s), np.int32)
    for row, window in zip(segment_ids, offsets):
        context = np.flatnonzero(window[:, 0] >= 0)
        row[context[0] if context.size else s:] = 1
    arrays = {"segment_ids": segment_ids, "input_mask": np.ones((f, s), np.int32)}
    return qa.Features(arrays, np.asarray(question if question is not None else [0] * f),
                       offsets, np.ones((f, s), bool) if max_context is None else np.asarray(max_context), {})


def test_hf_head_decoding_masks_the_question_before_choosing_its_n_best():
    # The original adds -1000 outside the context and [CLS] before taking the n_best starts and ends
    # (qa_tasks.py, qa_metrics.py). A question whose tokens hold the 25 largest start and end logits:
    # taking the top 20 of the raw logits finds no valid span at all and answers "".
    context = "alpha beta gamma"
    question_len = 25
    offsets = [[-1, -1]] * (1 + question_len + 1) + [[0, 5], [6, 10], [11, 16], [-1, -1]]
    start, end = np.full((1, len(offsets)), -5.0), np.full((1, len(offsets)), -5.0)
    start[0, 1:1 + question_len] = 10.0
    end[0, 1:1 + question_len] = 10.0
    first = 1 + question_len + 1
    start[0, first + 1], end[0, first + 2] = 3.0, 2.0  # "beta gamma": the best span in the context
    data = qa.QAData("x", [qa.Question("q", "q" * question_len, context, ("beta gamma",), 6, False)])
    predictions, no_answer = qa.decode({"start_logits": start, "end_logits": end}, _features([offsets]), data,
                                       n_best=20)
    assert predictions == {"q": "beta gamma"}
    assert no_answer["q"] == pytest.approx(-5.0 - 5.0 - 5.0)  # start[CLS] + end[CLS] - (3 + 2)


def test_decoding_picks_the_best_valid_span_from_hand_set_logits():
    context = "alpha beta gamma delta"
    # tokens: [CLS] q [SEP] alpha beta gamma delta [SEP]
    offsets = [[-1, -1], [-1, -1], [-1, -1], [0, 5], [6, 10], [11, 16], [17, 22], [-1, -1]]
    data = qa.QAData("x", [qa.Question("q", "q", context, ("beta gamma",), 6, False)])
    start = np.full((1, 8), -10.0)
    end = np.full((1, 8), -10.0)
    start[0, 1], end[0, 1] = 9.0, 9.0  # the best logits are in the question: invalid
    start[0, 6], end[0, 3] = 8.0, 8.0  # "delta" ... "alpha": the end before the start, invalid
    start[0, 4], end[0, 5] = 5.0, 4.0  # "beta gamma": the best valid span, 9
    end[0, 6] = -9.0  # "delta" alone: -1; every other valid pair scores less
    predictions, no_answer = qa.decode({"start_logits": start, "end_logits": end}, _features([offsets]), data)
    assert predictions == {"q": "beta gamma"}
    assert no_answer["q"] == pytest.approx(-20.0 - 9.0)  # start[CLS] + end[CLS] - the best span's score
    # At most max_answer_len sub-tokens: with 1, "delta" (8 - 9) beats "alpha" (-10 + 8) and "beta" (5 - 10).
    predictions, _ = qa.decode({"start_logits": start, "end_logits": end}, _features([offsets]), data,
                               max_answer_len=1)
    assert predictions == {"q": "delta"}
    end[0, 7] = 7.0  # "beta" to the final [SEP] (5 + 7): the end outside the context, invalid
    predictions, _ = qa.decode({"start_logits": start, "end_logits": end}, _features([offsets]), data)
    assert predictions == {"q": "beta gamma"}


def test_equal_scores_keep_the_first_candidate_as_the_original():
    # The original sorts candidates by score, stable: of equal scores the first (start-major) wins.
    context = "alpha beta"
    offsets = [[-1, -1], [0, 5], [6, 10], [-1, -1]]
    data = qa.QAData("x", [qa.Question("q", "q", context, ("alpha",), 0, False)])
    start, end = np.array([[-9.0, 1.0, 1.0, -9.0]]), np.array([[-9.0, 1.0, 1.0, -9.0]])
    # alpha (1 + 1), alpha beta (1 + 1), beta (1 + 1): the starts by logit are [1, 2], ends [1, 2].
    assert qa.decode({"start_logits": start, "end_logits": end}, _features([offsets]), data)[0] == {"q": "alpha"}


def test_decoding_looks_at_the_n_best_starts_and_ends_only():
    context = "alpha beta gamma delta"
    offsets = [[-1, -1], [-1, -1], [-1, -1], [0, 5], [6, 10], [11, 16], [17, 22], [-1, -1]]
    data = qa.QAData("x", [qa.Question("q", "q", context, ("alpha",), 0, False)])
    start, end = np.full((1, 8), -10.0), np.full((1, 8), -10.0)
    start[0, 3], start[0, 4] = 2.0, 1.0  # alpha, beta
    end[0, 3], end[0, 6] = 1.0, 2.0  # alpha, delta
    out = {"start_logits": start, "end_logits": end}
    assert qa.decode(out, _features([offsets]), data)[0] == {"q": "alpha beta gamma delta"}  # 2 + 2
    # The best start alone and the best two ends: alpha..delta again; the best end alone with the
    # second start only exists with n_best 2. The first character of the context is a valid start.
    assert qa.decode(out, _features([offsets]), data, n_best=1)[0] == {"q": "alpha beta gamma delta"}
    end[0, 6] = -5.0
    assert qa.decode(out, _features([offsets]), data, n_best=1)[0] == {"q": "alpha"}
    start[0, 3] = -20.0  # alpha is no longer a top start: with n_best 1 the only start is beta (end alpha < it)
    assert qa.decode(out, _features([offsets]), data, n_best=1)[0] == {"q": ""}


def test_decoding_across_windows_uses_max_context_and_the_joint_heads_beam():
    context = "alpha beta gamma"
    # Two windows over the same context; "beta" (6-10) is in both, its max context is window 1.
    offsets = [[[-1, -1], [0, 5], [6, 10], [-1, -1]], [[-1, -1], [6, 10], [11, 16], [-1, -1]]]
    max_context = [[False, True, False, False], [False, True, True, False]]
    data = qa.QAData("x", [qa.Question("q", "q", context, ("beta",), 6, False)])
    out = {"start_top_index": np.array([[2, 1], [1, 2]]), "start_top_log_probs": np.array([[-0.1, -3.0], [-0.5, -1.0]]),
           "end_top_index": np.array([[[2, 1], [1, 2]], [[1, 2], [2, 1]]]),
           "end_top_log_probs": np.array([[[-0.1, -2.0], [-0.1, -2.0]], [[-0.2, -1.0], [-0.3, -2.0]]]),
           "no_answer_logit": np.array([1.5, -0.5])}
    predictions, no_answer = qa.decode(out, _features(offsets, max_context), data)
    # Window 0's best (start 2 = "beta", -0.2) is not beta's max-context window; window 1's (start 1 =
    # "beta", end 1) scores -0.7 and wins over window 0's "alpha beta" (-3.1).
    assert predictions == {"q": "beta"}
    assert no_answer["q"] == -0.5  # the joint head: the min over windows of the no-answer logit


def test_a_question_with_no_valid_span_predicts_no_answer():
    data = qa.QAData("x", [qa.Question("q", "q", "alpha", (), -1, True)])
    out = {"start_logits": np.zeros((1, 3)), "end_logits": np.zeros((1, 3))}
    predictions, no_answer = qa.decode(out, _features([[[-1, -1]] * 3]), data)
    assert predictions == {"q": ""} and no_answer["q"] == np.inf


# ----------------------------------------------------------------------------- the official metrics


def test_normalisation_and_scores_follow_the_official_script():
    assert metrics.normalize_answer("The  Cat's, hat!") == "cats hat"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    assert metrics.normalize_answer("theory") == "theory"  # articles only as whole words
    assert metrics.squad_exact("The Cat", "cat.") == 1.0
    # gold "the cat sat" -> [cat, sat]; pred "a cat sat down" -> [cat, sat, down]: P 2/3, R 1, F1 0.8
    assert metrics.squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert metrics.squad_f1("cat cat", "cat") == pytest.approx(2 * 1 * 0.5 / 1.5)  # counts, not sets
    assert metrics.squad_f1("", "") == 1.0 and metrics.squad_f1("", "cat") == 0.0
    assert metrics.squad_f1("a", "the") == 1.0  # both normalise to nothing: agree on no answer


def test_squad_scores_take_the_max_over_gold_answers_and_split_has_and_no_answer():
    gold = {"a": ["Paris", "the city of Paris"], "b": ["red"], "c": []}
    predictions = {"a": "city of Paris", "b": "blue", "c": "green"}
    # a: exact 1 (second gold), b: 0, c: unanswerable; its no-answer score 2 > 0 -> predicted "", right.
    no_answer = {"a": -1.0, "b": 0.5, "c": 2.0}
    scores = metrics.squad_scores(gold, predictions, no_answer)
    # b: 0.5 > 0 -> predicted unanswerable, wrong (0).
    assert scores["exact"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)
    assert scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 100.0
    # Best threshold, by hand: all unanswerable scores 1/3; sweeping up, a (-1.0) adds 1 -> 2/3 at -1.0;
    # b (0.5) adds 0; c (2.0, predicted "green") subtracts 1. Best 2/3 at -1.0.
    assert scores["best_exact"] == pytest.approx(200 / 3) and scores["best_exact_thresh"] == -1.0
    v1 = metrics.squad_scores({"a": ["Paris"], "b": ["red"]}, {"a": "paris", "b": "red wine"})
    assert v1 == {"exact": 50.0, "f1": pytest.approx(100 * (1 + 2 / 3) / 2)}


# ----------------------------------------------------------------------------- the heads


def _spec():
    return model_spec(load_config(str(ROOT / "configs" / "tiny.py")))


def _inputs(rng, b=3, s=12):
    ids = rng.integers(5, 2048, (b, s)).astype(np.int32)
    segment = (np.arange(s)[None] >= 5).astype(np.int32).repeat(b, 0)
    mask = (np.arange(s)[None] < np.array([[12], [9], [7]])).astype(np.int32)
    return ids * mask, segment * mask, mask


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def test_joint_head_equals_numpy(rng=np.random.default_rng(0)):
    ids, segment, mask = _inputs(rng)
    model = SpanExtractor(_spec(), "paper", beam=4, answerable=True)
    params = nn.unbox(model.init({"params": jax.random.key(0)}, ids, segment, mask)["params"])
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32), params)
    out = jax.tree.map(np.asarray, model.apply({"params": params}, ids, segment, mask, True))
    starts = np.array([5, 0, 6])
    train = jax.tree.map(np.asarray, model.apply({"params": params}, ids, segment, mask, True, starts))

    # numpy: the encoder's output from the model itself (the encoder is tested elsewhere), the head by hand.
    class Encoder(nn.Module):
        @nn.compact
        def __call__(self, ids, segment, mask):
            from electra_jax.model import Embeddings, _DiscriminatorEncoder
            s = _spec()
            return _DiscriminatorEncoder(s, name="discriminator")(Embeddings(s, name="embeddings")(ids, segment), mask, True)

    x = np.asarray(Encoder().apply({"params": params}, ids, segment, mask), np.float64)
    h = jax.tree.map(lambda p: np.asarray(p, np.float64), params["head"])
    allowed = (mask * segment).astype(bool)
    allowed[:, 0] = True
    start = x @ h["start"]["kernel"][:, 0] + h["start"]["bias"][0] + np.where(allowed, 0, -1000.0)
    np.testing.assert_allclose(out["start_logits"], start, rtol=1e-4, atol=1e-4)

    def end_given(b, k):
        both = np.concatenate([np.repeat(x[b, k][None], x.shape[1], 0), x[b]], -1)
        hidden = _gelu(both @ h["end_hidden_kernel"] + h["end_hidden_bias"])
        return hidden @ h["end"]["kernel"][:, 0] + h["end"]["bias"][0] + np.where(allowed[b], 0, -1000.0)

    for b, k in enumerate(starts):  # training: the end given the gold start
        np.testing.assert_allclose(train["end_logits"][b], end_given(b, k), rtol=1e-4, atol=1e-4)
    log_softmax = lambda v: v - np.log(np.sum(np.exp(v - v.max()))) - v.max()
    for b in range(3):  # inference: the beam of starts, each start's best ends
        top = np.argsort(-start[b], kind="stable")[:4]
        np.testing.assert_array_equal(out["start_top_index"][b], top)
        np.testing.assert_allclose(out["start_top_log_probs"][b], log_softmax(start[b])[top], rtol=1e-4, atol=1e-4)
        for i, k in enumerate(top):
            ends = log_softmax(end_given(b, k))
            np.testing.assert_array_equal(out["end_top_index"][b, i], np.argsort(-ends, kind="stable")[:4])
    p = np.exp(start - start.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pooled = np.concatenate([x[:, 0], np.einsum("bs,bsh->bh", p, x)], -1)
    hidden = _gelu(pooled @ h["answerable_hidden"]["kernel"] + h["answerable_hidden"]["bias"])
    np.testing.assert_allclose(out["no_answer_logit"], hidden @ h["answerable"]["kernel"][:, 0] + h["answerable"]["bias"][0],
                               rtol=1e-4, atol=1e-4)


def test_span_loss_equals_numpy(rng=np.random.default_rng(1)):
    from electra_jax.finetune.run import span_loss

    ids, segment, mask = _inputs(rng)
    batch = {"input_ids": ids, "segment_ids": segment, "input_mask": mask,
             "start_positions": np.array([5, 0, 6], np.int32), "end_positions": np.array([7, 0, 6], np.int32),
             "is_impossible": np.array([0, 1, 0], np.float32), "weights": np.array([1, 1, 0], np.float32)}
    model = SpanExtractor(_spec(), "hf")
    params = nn.unbox(model.init({"params": jax.random.key(0)}, ids, segment, mask)["params"])
    loss, parts = span_loss(params, batch, None, model=model, deterministic=True)
    out = model.apply({"params": params}, ids, segment, mask, True)
    allowed = (mask * segment).astype(bool)
    allowed[:, 0] = True

    def ce(logits, gold):
        logits = np.where(allowed, np.asarray(logits, np.float64), np.asarray(logits) - 1000.0)
        m = logits.max(-1, keepdims=True)
        return np.log(np.exp(logits - m).sum(-1)) + m[:, 0] - logits[np.arange(3), gold]

    per = (ce(out["start_logits"], batch["start_positions"]) + ce(out["end_logits"], batch["end_positions"])) / 2
    assert float(loss) == pytest.approx(per[0] + per[1], rel=1e-5)  # the third row weighs 0
    assert float(parts["loss"][1]) == 2.0


def _encode(tok, path, *overrides, log=lambda *_: None):
    from electra_jax.finetune.run import encode_task
    from electra_jax.finetune.tasks import task_spec

    config = load_config("finetune/tiny", ["--config.task.name=qa", "--config.task.max_len=32",
                                           "--config.task.max_query_len=8", *overrides])
    data = qa.read_squad(path)
    return config, encode_task(config, task_spec("qa"), data, {"dev": data}, tok, log=log)


def test_squad11_trains_the_answerability_head_with_label_0_as_the_original(tok, tmp_path):
    # The original trains its answerability classifier on every QA task (answerable_classifier = True,
    # the loss added with no 2.0 check: qa_tasks.py); on 1.1 every label is 0 and scoring ignores it.
    from electra_jax.finetune.run import span_loss

    context = "the city was babylon . the number was seven ."
    path = _squad(tmp_path / "v1.json", [(context, [("a", "which city ?", _answer(context, "babylon"), False),
                                                    ("b", "how many ?", _answer(context, "seven"), False)])])
    config, (train, evals, _, answerable) = _encode(tok, path)
    assert answerable and config.task.answerable_classifier
    _, (_, _, _, without) = _encode(tok, path, "--config.task.answerable_classifier=False")
    assert not without

    model = SpanExtractor(_spec(), "paper", beam=4, answerable=answerable)
    ids, segment, mask = train["input_ids"], train["segment_ids"], train["input_mask"]
    params = nn.unbox(model.init({"params": jax.random.key(0)}, ids, segment, mask)["params"])
    batch = {**train, "weights": np.ones(len(ids), np.float32)}
    loss, _ = span_loss(params, batch, None, model=model, deterministic=True, no_answer_weight=0.5)
    out = jax.tree.map(lambda v: np.asarray(v, np.float64),
                       model.apply({"params": params}, ids, segment, mask, True, train["start_positions"]))

    def ce(logits, gold):  # the model's logits are already masked (-1000 off the context)
        m = logits.max(-1, keepdims=True)
        return np.log(np.exp(logits - m).sum(-1)) + m[:, 0] - logits[np.arange(len(gold)), gold]

    z = out["no_answer_logit"]
    assert np.all(train["is_impossible"] == 0)
    span = (ce(out["start_logits"], train["start_positions"]) + ce(out["end_logits"], train["end_positions"])) / 2
    answerability = np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0)  # sigmoid CE with label 0
    assert float(loss) == pytest.approx(float(np.sum(span + 0.5 * answerability)), rel=1e-5)
    # Scored as 1.1: exact and f1 only, with no threshold.
    arrays, scorer = evals["dev"]
    outputs = jax.tree.map(np.asarray, model.apply({"params": params}, arrays["input_ids"], arrays["segment_ids"],
                                                  arrays["input_mask"], True))
    scores, files = scorer(outputs)
    assert set(scores) == {"exact", "f1"} and set(files) == {"predictions.json"}  # 1.1: no null odds


def test_squad2_is_scored_at_the_originals_no_answer_threshold(tok, tmp_path):
    # qa_na_threshold -2.75 (configure_finetuning.py), passed to squad_official_eval.py as na_prob_thresh.
    # A question whose best span is right and whose no-answer score is -1: answered at threshold 0
    # (EM 100), "" at -2.75 (EM 0). The unanswerable one has a no-answer score of +5: "" either way.
    context = "the city was babylon . the number was seven ."
    path = _squad(tmp_path / "v2.json", [(context, [("a", "which city ?", _answer(context, "babylon"), False),
                                                    ("b", "what colour ?", [], True)])])
    config, (_, evals, _, answerable) = _encode(tok, path, "--config.head=hf")
    assert answerable and config.task.qa_na_threshold == -2.75
    arrays, scorer = evals["dev"]
    _, features = scorer.args
    start = np.full(arrays["input_ids"].shape, -10.0)
    end = start.copy()
    babylon = context.index("babylon")
    token = int(np.flatnonzero(features.offsets[0, :, 0] == babylon)[0])
    start[0, token], end[0, token] = 5.0, 5.0  # the span "babylon": 10
    start[0, 0] = end[0, 0] = 4.5  # [CLS]: 9, so the no-answer score is 9 - 10 = -1
    start[1, 0] = end[1, 0] = 10.0  # question b: [CLS] 20 against its best span's 15 (+5)
    start[1, token], end[1, token] = 7.5, 7.5
    scores, files = scorer({"start_logits": start, "end_logits": end})
    assert (scores["exact"], scores["HasAns_exact"], scores["NoAns_exact"]) == (50.0, 0.0, 100.0)
    assert scores["best_exact"] == 100.0  # at the threshold best on this set (optimistic)
    _, (_, evals0, _, _) = _encode(tok, path, "--config.head=hf", "--config.task.qa_na_threshold=0")
    assert evals0["dev"][1]({"start_logits": start, "end_logits": end})[0]["exact"] == 100.0
    # The files SQuAD's evaluator reads: "" where the no-answer score is above the threshold.
    assert json.loads(files["predictions.json"]) == {"a": "", "b": ""}
    assert json.loads(files["null_odds.json"]) == pytest.approx({"a": -1.0, "b": 5.0})


def test_qa_log_says_what_happens_to_each_kind_of_problem(tok, tmp_path):
    context = "the city was babylon . the number was seven ."
    long_question = " ".join(["which"] * 12) + " city ?"  # longer than max_query_len 8: cut, still trained on
    path = _squad(tmp_path / "p.json", [(context, [("a", long_question, _answer(context, "babylon"), False),
                                                   ("off", "how many ?", [("seven", 3)], False)])])
    lines = []
    _encode(tok, path, log=lines.append)
    train_line, dev_line = lines
    assert "1 questions longer than task.max_query_len 8 tokens (cut to it, as the original; trained on)" in train_line
    assert "1 answers whose answer_start does not match the context (not trained on;" in train_line
    assert "(cut to it, as the original; scored)" in dev_line and "(scored by their text;" in dev_line
    assert "not trained on)" not in train_line.split(",")[0]  # the truncated questions are trained on


# ----------------------------------------------------------------------------- export


def test_hf_span_head_exports_as_electra_for_question_answering(tok, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from electra_jax.hf import export_model

    spec = _spec()
    rng = np.random.default_rng(2)
    ids, segment, mask = _inputs(rng)
    model = SpanExtractor(spec, "hf")
    params = nn.unbox(model.init({"params": jax.random.key(3)}, ids, segment, mask)["params"])
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32), params)
    out = export_model(params, spec, "question_answerer", str(tmp_path / "hf"), SAMPLE_TOKENIZER, "test",
                       extra_config={"architectures": ["ElectraForQuestionAnswering"], "num_labels": 2})
    hf, info = transformers.ElectraForQuestionAnswering.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = model.apply({"params": params}, ids, segment, mask, True)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids).long(), token_type_ids=torch.tensor(segment).long(),
                    attention_mask=torch.tensor(mask).long())
    for name in ("start_logits", "end_logits"):
        np.testing.assert_allclose(np.asarray(ours[name]) * mask, getattr(theirs, name).numpy() * mask,
                                   atol=1e-5, rtol=1e-5)
    assert type(transformers.AutoModelForQuestionAnswering.from_pretrained(out)).__name__ == \
        "ElectraForQuestionAnswering"


def _hf_answer(transformers, torch, model_dir, question, context):
    """Answer with the exported directory alone, as a transformers user would (transformers 5 has no
    question-answering pipeline): tokenizer with offsets -> start/end logits -> the best span."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(model_dir)
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets, segment = enc.pop("offset_mapping")[0], enc.token_type_ids[0]
    with torch.no_grad():
        out = model(**enc)
    scores = out.start_logits[0][:, None] + out.end_logits[0][None, :]
    valid = (segment[:, None] == 1) & (segment[None, :] == 1) & torch.ones_like(scores, dtype=bool).triu()
    valid[-1], valid[:, -1] = False, False  # the final [SEP]
    start, end = divmod(int(torch.where(valid, scores, -1e9).argmax()), scores.shape[1])
    return context[int(offsets[start][0]):int(offsets[end][1])]


# ----------------------------------------------------------------------------- bad input


def test_bad_squad_files_get_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x y", "qas": [{"id": "1", "answers": []}]}]}]}))
    with pytest.raises(TaskError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\] has no 'question' key"):
        qa.read_squad(str(bad))
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(TaskError, match="bad.json: the top level has no 'data' key"):
        qa.read_squad(str(bad))
    bad.write_text("{not json")
    with pytest.raises(TaskError, match="bad.json: not JSON"):
        qa.read_squad(str(bad))
    empty = _squad(tmp_path / "empty.json", [("  ", [("q7", "what?", [], True)])])
    with pytest.raises(TaskError, match=r"empty.json: data\[0\].paragraphs\[0\] has an empty context .*q7"):
        qa.read_squad(empty)
    with pytest.raises(TaskError, match="nope.json: no such file"):
        qa.read_squad(str(tmp_path / "nope.json"))


def test_finetune_refuses_a_bad_squad_file_before_writing_anything(tmp_path, monkeypatch, capsys):
    from electra_jax.cli import main

    monkeypatch.chdir(tmp_path)
    good, _ = _fact_file(tmp_path / "good.json", 4, 0)
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    args = ["finetune", "--init", _random_init(tmp_path), "--task", "qa", "--workdir", "run",
            "--config", "finetune/tiny", "--config.task.max_len=40"]
    assert main(args + ["--train", "good.json", "--dev", "bad.json"]) == 2
    assert "bad.json: data[0].paragraphs[0] has no 'context' key" in capsys.readouterr().err
    assert main(args + ["--train", "good.json", "--dev", "good.json"]) == 2  # 64-token questions in 40
    assert "task.max_query_len 64: must be between 1 and task.max_len - 4 (36)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_misaligned_answers_are_counted_shown_and_not_trained_on(tok, tmp_path):
    context = "the city was babylon . the number was seven ."
    path = _squad(tmp_path / "m.json", [(context, [("ok", "what was the city ?", _answer(context, "babylon"), False),
                                                   ("off", "what was the number ?", [("seven", 3)], False)])])
    data = qa.read_squad(path)
    assert data.misaligned == ["off: answer_start 3 points at ' city', not 'seven'"]
    train = qa.featurize(data, tok, 32, 64, 128, 0, training=True)
    assert list(train.question) == [0]  # only the aligned question is trained on
    dev = qa.featurize(data, tok, 32, 64, 128, 0, training=False)
    assert list(dev.question) == [0, 1]  # but both are scored (the metrics read only the answer texts)


# ----------------------------------------------------------------------------- end to end


KINDS = {"garment": ["scarlet", "purple", "white", "black"], "number": ["seven", "twelve", "forty", "three"],
         "city": ["babylon", "egypt", "jerusalem", "bethel"]}
ASK = {"garment": "what colour ?", "number": "how many ?", "city": "which place ?"}


def _fact_file(path, n, seed, unanswerable=0.0):
    """Contexts of facts of three kinds in random order plus a filler sentence ("the garment was scarlet
    . ..."); each question asks for one kind in other words ("what colour ?"; with `unanswerable`,
    sometimes one the context lacks). A model has to find the fact of the asked kind. Returns the file and the exact match of answering with the
    first fact's value (right a third of the time)."""
    r = random.Random(seed)
    paragraphs, first_right = [], 0
    for i in range(n):
        kinds = r.sample(sorted(KINDS), 3)
        values = {k: r.choice(KINDS[k]) for k in kinds}
        asked = r.choice(kinds)
        impossible = r.random() < unanswerable
        if impossible:
            kinds.remove(asked)
        first_right += not impossible and kinds[0] == asked
        sentences = [f"the {k} was {values[k]} ." for k in kinds]
        sentences.insert(r.randrange(len(sentences) + 1), "and it came to pass .")
        context = " ".join(sentences)
        answers = [] if impossible else [(values[asked], context.index(f"the {asked} was ") + len(f"the {asked} was "))]
        paragraphs.append((context, [(f"q{i}", ASK[asked], answers, impossible)]))
    return _squad(path, paragraphs), first_right / n


@pytest.mark.slow
def test_tiny_model_learns_to_answer_and_exports(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from electra_jax.cli import main

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    train, _ = _fact_file(tmp_path / "train.json", 600, 0)
    dev, first_fact = _fact_file(tmp_path / "dev.json", 120, 1)
    init = _random_init(tmp_path)
    code = main(["finetune", "--init", init, "--task", "qa", "--train", "train.json", "--dev", "dev.json",
                 "--workdir", "qa-run", "--config", "finetune/tiny", "--config.head=hf",
                 "--config.task.max_len=40", "--config.task.max_query_len=16", "--config.num_epochs=8", "--config.optim.learning_rate=1e-3"])
    assert code == 0
    results = json.loads((tmp_path / "qa-run" / "results.json").read_text())
    assert results["median"]["dev/exact"] > 100 * first_fact + 20, (results["median"], first_fact)
    assert main(["export", "--workdir", "qa-run", "--out", "hf"]) == 0
    context = "the number was twelve . and it came to pass . the city was egypt ."
    assert _hf_answer(transformers, torch, "hf", "which place ?", context) == "egypt"


def _random_init(tmp_path):
    from electra_jax.hf import export_pretrained
    from electra_jax.model import Electra, init_params

    spec = _spec()
    params = jax.tree.map(np.asarray, nn.unbox(init_params(Electra(spec), jax.random.key(0), 64, 9)))
    export_pretrained(params, spec, str(tmp_path / "init"), SAMPLE_TOKENIZER, "random tiny", pad_token_id=0)
    return str(tmp_path / "init" / "discriminator")


@pytest.mark.slow
def test_squad2_with_the_papers_joint_head_trains_and_reports_has_and_no_answer(tmp_path, monkeypatch, capsys):
    from electra_jax.cli import main

    monkeypatch.chdir(tmp_path)
    _fact_file(tmp_path / "train.json", 320, 0, unanswerable=0.3)
    _, first_fact = _fact_file(tmp_path / "dev.json", 100, 1, unanswerable=0.3)
    init = _random_init(tmp_path)
    assert main(["finetune", "--init", init, "--task", "qa", "--train", "train.json", "--dev", "dev.json",
                 "--workdir", "run", "--config", "finetune/tiny", "--config.task.max_len=40",
                 "--config.task.max_query_len=16", "--config.num_epochs=6", "--config.head=paper",
                 "--config.optim.learning_rate=1e-3"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    median = results["median"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task"]["answerable"] is True
    assert {"dev/HasAns_exact", "dev/NoAns_exact", "dev/best_f1", "dev/best_f1_thresh"} <= set(median)
    assert median["dev/f1"] > 100 * first_fact + 20, median
    # The files SQuAD's evaluator reads, scored here by the official rules written out independently,
    # give results.json's numbers; `predict` on the dev file writes the same predictions.
    predictions = json.loads((tmp_path / "run" / "seed_0" / "dev_predictions.json").read_text())
    odds = json.loads((tmp_path / "run" / "seed_0" / "dev_null_odds.json").read_text())
    official = _official_v2(json.loads((tmp_path / "dev.json").read_text()), predictions, odds, -2.75)
    run0 = results["runs"][0]
    for name, value in official.items():
        assert run0[f"dev/{name}"] == pytest.approx(value, abs=1e-9), name
    assert main(["predict", "--model", "run", "--input", "dev.json", "--out", "preds.json"]) == 0
    assert json.loads((tmp_path / "preds.json").read_text()) == predictions
    assert json.loads((tmp_path / "preds.null_odds.json").read_text()) == odds
    # The joint head has no Hugging Face class: export says so and what to do.
    capsys.readouterr()
    assert main(["export", "--workdir", "run", "--out", "hf"]) == 2
    assert "--config.head=hf" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def _official_v2(dataset, predictions, na_probs, threshold):
    """SQuAD 2.0's evaluate-v2.0.py, its rules restated: normalise, EM and F1 as the max over gold
    answers ([""] when none), no answer predicted where the null odds are above the threshold."""
    import collections
    import re
    import string

    def normalize(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(gold, pred):
        g, p = normalize(gold).split(), normalize(pred).split()
        if not g or not p:
            return float(g == p)
        common = sum((collections.Counter(g) & collections.Counter(p)).values())
        return 0.0 if not common else 2 * common / (len(g) + len(p))

    exact, f1s, has = {}, {}, {}
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa_ in paragraph["qas"]:
                golds = [a["text"] for a in qa_["answers"] if normalize(a["text"])] or [""]
                has[qa_["id"]] = golds != [""]
                pred = predictions[qa_["id"]]
                exact[qa_["id"]] = max(float(normalize(g) == normalize(pred)) for g in golds)
                f1s[qa_["id"]] = max(f1(g, pred) for g in golds)
    for scores in (exact, f1s):
        for q in scores:
            if na_probs[q] > threshold:
                scores[q] = float(not has[q])
    mean = lambda scores, ids: 100.0 * sum(scores[q] for q in ids) / len(ids)
    groups = {"": list(has), "HasAns_": [q for q in has if has[q]], "NoAns_": [q for q in has if not has[q]]}
    return {f"{prefix}{name}": mean(scores, ids) for prefix, ids in groups.items()
            for name, scores in (("exact", exact), ("f1", f1s))}


def test_squad_through_tfds_reads_its_features():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        with pytest.raises(TaskError, match=r"tfds squad/v1.1:train is not prepared .* pass --download"):
            qa.read_squad_tfds("squad/v1.1", "train", None, download=False)
        v1 = qa.read_squad_tfds("squad/v1.1", "validation", None, download=True)
        data = qa.read_squad_tfds("squad/v2.0", "validation", None, download=True)
        rows = list(tfds.as_numpy(tfds.load("squad/v2.0", split="validation")))
    # SQuAD 1.1 has no is_impossible feature: a question is unanswerable only when it has no answers.
    assert any(q.answers for q in v1.questions)
    assert [q.is_impossible for q in v1.questions] == [not q.answers for q in v1.questions]
    assert [q.qid for q in data.questions] == [r["id"].decode() for r in rows]
    assert [q.is_impossible for q in data.questions] == [bool(r["is_impossible"]) for r in rows]
    assert [list(q.answers) for q in data.questions] == [[t.decode() for t in r["answers"]["text"]] for r in rows]
    # Mock contexts are random text: every answer_start that misses its text is counted.
    assert len(data.misaligned) == sum(bool(len(r["answers"]["text"])) and r["context"].decode()[
        r["answers"]["answer_start"][0]:].find(r["answers"]["text"][0].decode()) != 0 for r in rows)
