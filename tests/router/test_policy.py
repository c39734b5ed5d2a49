"""Routing policies: fixed, random, confidence (monotone in the score), forced routes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.confidence import ConfidencePolicy
from router.policy import FixedRoute, HoldBack, RandomRoute, RouteRequest, forced
from router.scorers import SignalScorer
from router.signals import WindowSignals

REQUEST = RouteRequest("r", message_count=1, prompt_chars=10)


def window(min_prob: float, tokens: int = 4) -> WindowSignals:
    return WindowSignals(tokens=tokens, mean_logprob=math.log(max(min_prob, 1e-9)), min_prob=min_prob,
                         p10_prob=min_prob, p25_prob=min_prob, mean_margin=1.0, min_margin=1.0, mean_entropy=0.5,
                         max_entropy=0.5)


def test_fixed_policies_always_choose_their_backend():
    assert FixedRoute("student").decide(REQUEST).route == "student"
    decision = FixedRoute("teacher").decide(REQUEST)
    assert (decision.route, decision.reason) == ("teacher", "policy:teacher_only")
    assert FixedRoute("student").hold_back is None


def test_random_policy_sends_its_share_to_the_teacher():
    policy = RandomRoute(0.3, seed=7)
    share = sum(policy.decide(REQUEST).route == "teacher" for _ in range(4000)) / 4000
    assert share == pytest.approx(0.3, abs=0.025)
    assert {RandomRoute(0.0).decide(REQUEST).route for _ in range(50)} == {"student"}
    assert {RandomRoute(1.0).decide(REQUEST).route for _ in range(50)} == {"teacher"}
    with pytest.raises(ValueError, match="between 0 and 1"):
        RandomRoute(1.5)


def test_forced_route_says_why():
    assert forced("teacher").reason == "forced:header"


@given(low=st.floats(0, 1), high=st.floats(0, 1), threshold=st.floats(0, 1))
def test_confidence_decision_is_monotone_in_the_score(low, high, threshold):
    low, high = sorted((low, high))
    policy = ConfidencePolicy(SignalScorer("min_prob"), threshold, prefix_tokens=4)
    at_low, at_high = policy.decide(REQUEST, window(low)), policy.decide(REQUEST, window(high))
    if at_low.route == "student":  # a surer answer is never escalated when a less sure one was kept
        assert at_high.route == "student"
    assert (at_low.route == "teacher") == (low < threshold)


def test_confidence_decision_reports_score_threshold_and_reason():
    policy = ConfidencePolicy(SignalScorer("min_prob"), 0.5, prefix_tokens=1)
    kept, escalated = policy.decide(REQUEST, window(0.9)), policy.decide(REQUEST, window(0.2))
    assert (kept.route, kept.reason, kept.score, kept.threshold) == ("student", "confidence:high", 0.9, 0.5)
    assert (escalated.route, escalated.reason) == ("teacher", "confidence:low")


def test_no_tokens_is_no_evidence_and_escalates():
    policy = ConfidencePolicy(SignalScorer("min_prob"), 0.0, prefix_tokens=4)
    empty = WindowSignals(0, *([math.nan] * 8))
    decision = policy.decide(REQUEST, empty)
    assert (decision.route, decision.reason, decision.score) == ("teacher", "confidence:no_tokens", None)


def test_confidence_policy_needs_evidence_and_a_valid_prefix():
    with pytest.raises(ValueError, match="first tokens"):
        ConfidencePolicy(SignalScorer("min_prob"), 0.5, prefix_tokens=4).decide(REQUEST)
    with pytest.raises(ValueError, match="at least one token"):
        HoldBack(tokens=0, top_logprobs=5)
    with pytest.raises(ValueError, match="unknown confidence signal"):
        SignalScorer("confidence")
