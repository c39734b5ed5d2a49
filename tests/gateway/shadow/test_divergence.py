"""Divergence figures: hand-computed values, and the KL's documented bias (a lower bound, exact without a tail)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.shadow.divergence import divergence, token_kl
from runtime.contract import TokenLogprob, TopLogprob


def entry(token: str, reported: dict[str, float]) -> TokenLogprob:
    """A token with its reported alternatives (probabilities), sampled token first as vLLM lists them."""
    alternatives = [TopLogprob(token, math.log(reported[token]))]
    alternatives += [TopLogprob(other, math.log(p)) for other, p in reported.items() if other != token]
    return TokenLogprob(token, math.log(reported[token]), tuple(alternatives))


def test_identical_distributions_have_zero_kl():
    same = {"a": math.log(0.7), "b": math.log(0.2)}
    assert token_kl(same, same) == pytest.approx(0.0, abs=1e-12)


def test_kl_by_hand_with_the_tail_bucket():
    teacher, student = {"a": math.log(0.5), "b": math.log(0.3)}, {"a": math.log(0.6), "b": math.log(0.1)}
    expected = 0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.1) + 0.2 * math.log(0.2 / 0.3)
    assert token_kl(teacher, student) == pytest.approx(expected)


def test_a_token_only_one_side_reports_joins_the_tail():
    teacher = {"a": math.log(0.6), "c": math.log(0.3)}  # the student did not report "c"
    student = {"a": math.log(0.6), "b": math.log(0.3)}
    expected = 0.6 * math.log(1.0) + 0.4 * math.log(0.4 / 0.4)  # coarsened to {a, rest}: identical
    assert token_kl(teacher, student) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 2, 5, 10, 30]))
def test_top_k_kl_never_exceeds_the_full_vocabulary_kl(seed, k):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.full(30, 0.3)), rng.dirichlet(np.full(30, 0.3))
    full = float(np.sum(p * np.log(p / q)))
    top = lambda dist: {str(i): math.log(dist[i]) for i in np.argsort(-dist)[:k]}  # noqa: E731
    estimate = token_kl(top(p), top(q))
    assert 0.0 <= estimate <= full + 1e-9
    if k >= 30:
        assert estimate == pytest.approx(full)


def test_agreement_nll_and_answer_figures():
    student = [entry("{", {"{": 0.9, "[": 0.1}), entry("x", {"x": 0.6, "y": 0.4})]
    teacher = [entry("{", {"{": 0.99, "[": 0.01}), entry("x", {"x": 0.2, "y": 0.8})]  # teacher prefers "y"
    figures = divergence(student, teacher, '{"q": "a", "p": "b"}', '{"q": "a", "p": "c"}')
    assert figures.aligned and figures.tokens == 2
    assert figures.top1_agreement == 0.5
    assert figures.teacher_nll == pytest.approx(-(math.log(0.99) + math.log(0.2)) / 2)
    assert figures.mean_kl == pytest.approx(np.mean(figures.kl_per_token)) and figures.mean_kl > 0
    assert figures.answers_agree is False and figures.field_agreement == 0.5


def test_a_different_tokenization_keeps_only_the_nll():
    student = [entry("ab", {"ab": 0.9})]
    teacher = [entry("a", {"a": 0.5}), entry("b", {"b": 0.5})]
    figures = divergence(student, teacher, "ab", "ab")
    assert not figures.aligned and math.isnan(figures.mean_kl) and math.isnan(figures.top1_agreement)
    assert figures.teacher_nll == pytest.approx(-math.log(0.5)) and figures.answers_agree is True


def with_id(token: str | None, token_id: int, logprob: float) -> TokenLogprob:
    """A token as the HTTP backend reads it from vLLM's `token_id:<id>` form: its text from `bytes` (vLLM decodes
    each token alone, so a byte of a multi-byte character is U+FFFD), alternatives by id."""
    return TokenLogprob(token, logprob, (TopLogprob("", logprob, token_id), TopLogprob("", -3.0, 999)), token_id)


def test_a_character_split_over_byte_tokens_stays_aligned_by_ids():
    """"café!" where "é" is two byte tokens, then the end token: each byte's text is one replacement character,
    so counting the answer's characters cut the student's tokens one short and the record was stored unaligned,
    without KL. With ids on both sides the scored ids decide: tokens past them (the end token) are left out."""
    student = [with_id("caf", 10, -0.1), with_id("\ufffd", 200, -0.2), with_id("\ufffd", 201, -0.3),
               with_id("!", 11, -0.4), with_id("", 0, -0.05)]
    teacher = [with_id("caf", 10, -0.2), with_id("\ufffd", 200, -0.1), with_id("\ufffd", 201, -0.3),
               with_id("!", 11, -0.5)]
    figures = divergence(student, teacher, "café!", "café!")
    assert figures.aligned and figures.tokens == 4 and len(figures.kl_per_token) == 4
    assert figures.top1_agreement == 1.0
    stopped = divergence(student[:4] + [with_id(None, 12, -0.2), with_id(None, 13, -0.3)], teacher, "café!", None)
    assert stopped.aligned  # a stop string's tokens, reported past the answer's text, are left out too
    other = divergence(student[:1] + [with_id("\ufffd", 202, -0.2)] + student[2:], teacher, "café!", None)
    assert not other.aligned  # a different token at the split is not paired
