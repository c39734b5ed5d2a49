"""Confidence signals: properties over random inputs, and the edge cases (k=1, -inf, empty windows)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.signals import aggregate, token_signals


def random_step(rng: np.random.Generator, vocab: int, k: int, temperature: float):
    """A full distribution, its vLLM-style top-k report (sampled first) and the sampled token."""
    logits = rng.normal(size=vocab) / temperature
    logprobs = logits - np.logaddexp.reduce(logits)
    sampled = rng.choice(vocab, p=np.exp(logprobs))
    ranked = [int(i) for i in np.argsort(-logprobs) if i != sampled]
    reported = [sampled] + ranked[: k - 1]
    return logprobs, logprobs[reported], logprobs[sampled]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 20), temperature=st.floats(0.05, 5.0))
def test_signals_bound_the_full_distribution(seed, k, temperature):
    rng = np.random.default_rng(seed)
    full, reported, sampled = random_step(rng, vocab=64, k=k, temperature=temperature)
    signals = token_signals(reported[None, :], np.array([sampled]))
    true_entropy = -(np.exp(full) * full).sum()
    assert signals.entropy[0] <= true_entropy + 1e-9, "top-k + tail entropy is a lower bound"
    assert signals.entropy[0] >= -1e-12
    ordered = np.sort(full)[::-1]
    if k >= 2 and reported.max() == ordered[0]:
        second = np.sort(reported)[::-1][1]
        assert signals.margin[0] == pytest.approx(ordered[0] - second)
    if k >= 2:
        assert signals.margin[0] >= 0
    else:  # the one reported token against the whole tail
        assert signals.margin[0] == pytest.approx(sampled - np.log1p(-np.exp(sampled)))


def test_peaked_distribution_is_confident_and_flat_is_not():
    peaked = token_signals(np.array([[-0.01, -5.0, -6.0]]), np.array([-0.01]))
    flat = token_signals(np.log(np.full((1, 3), 1 / 3)), np.log(np.array([1 / 3])))
    assert peaked.margin[0] > flat.margin[0] and peaked.entropy[0] < flat.entropy[0]
    assert flat.entropy[0] == pytest.approx(math.log(3))  # the tail is empty: exact
    assert flat.margin[0] == pytest.approx(0.0)


def test_k_equal_one_uses_the_tail_as_the_runner_up():
    signals = token_signals(np.log(np.array([[0.9]])), np.log(np.array([0.9])))
    assert signals.margin[0] == pytest.approx(math.log(0.9) - math.log(0.1))
    assert signals.entropy[0] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_minus_infinity_and_vllm_floor_are_probability_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signals = token_signals(np.array([[0.0, -np.inf, -9999.0]]), np.array([0.0]))
    assert signals.entropy[0] == 0.0 and math.isinf(signals.margin[0])
    window = aggregate(signals)
    assert window.min_prob == 1.0 and math.isfinite(window.mean_margin)


def test_order_of_alternatives_does_not_matter():
    rows = np.array([[-2.0, -0.2, -3.0], [-0.1, -4.0, -2.5]])
    shuffled = rows[:, ::-1]
    a, b = token_signals(rows, rows.max(axis=1)), token_signals(shuffled, rows.max(axis=1))
    assert np.allclose(a.margin, b.margin) and np.allclose(a.entropy, b.entropy)


def test_quantiles_see_the_one_weak_token_the_mean_hides():
    confident = np.full(40, -0.01)
    one_weak = confident.copy()
    one_weak[7] = math.log(0.05)
    top = np.stack([one_weak, np.full(40, -6.0)], axis=1)
    strong, weak = aggregate(token_signals(top, confident)), aggregate(token_signals(top, one_weak))
    assert strong.mean_logprob - weak.mean_logprob < 0.08  # the mean barely moves over 40 tokens
    assert weak.min_prob == pytest.approx(0.05) and strong.min_prob > 0.98


def test_empty_window_has_no_evidence():
    window = aggregate(token_signals(np.zeros((0, 5)), np.zeros(0)))
    assert window.tokens == 0 and math.isnan(window.mean_logprob) and math.isnan(window.min_prob)


def test_windows_slice_tokens():
    signals = token_signals(np.log(np.array([[0.5, 0.5], [0.99, 0.01], [0.9, 0.1]])), np.log([0.5, 0.99, 0.9]))
    assert aggregate(signals.window(0, 1)).min_prob == pytest.approx(0.5)
    assert aggregate(signals.window(1)).min_prob == pytest.approx(0.9)


@pytest.mark.parametrize(("top", "sampled"), [(np.zeros((2, 3)), np.zeros(3)), (np.zeros((2, 0)), np.zeros(2)),
                                              (np.array([[np.nan]]), np.zeros(1))])
def test_bad_shapes_and_nan_are_refused(top, sampled):
    with pytest.raises(ValueError):
        token_signals(top, sampled)


def test_a_token_a_grammar_forces_is_left_out_of_the_hold_back_window():
    """Under a grammar a forced token comes with logprob 0 and its alternatives at vLLM's floor: it tells nothing
    about the model, and a window of forced tokens judged every answer certain. The window is the first tokens
    that had an alternative; an answer of forced tokens only is judged on them (certain)."""
    from router.signals import hold_back_window, is_forced

    floor = -9999.0
    top = np.array([[0.0, floor, floor], [0.0, floor, floor], [-0.7, -0.9, -3.0], [-0.01, -5.0, -6.0]])
    signals = token_signals(top, top[:, 0])
    assert signals.forced.tolist() == [True, True, False, False]
    window = aggregate(hold_back_window(signals, 2))
    assert window.tokens == 2 and window.min_prob == pytest.approx(math.exp(-0.7))
    assert aggregate(signals.window(0, 2)).min_prob == 1.0  # what the window was: two certain tokens
    only_forced = token_signals(top[:2], top[:2, 0])
    assert aggregate(hold_back_window(only_forced, 4)).tokens == 2
    assert is_forced([0.0, floor, floor]) and not is_forced([0.0, -22.4]) and not is_forced([0.0])
    assert not token_signals(top[:, :1], top[:, 0]).forced.any()  # one alternative cannot tell
