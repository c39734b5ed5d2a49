"""Confidence signals from a student's own token logprobs: pure functions over numpy arrays.

Input is what an OpenAI-compatible server returns with `logprobs=true, top_logprobs=k`: for each of T generated
tokens, the k reported alternatives' logprobs and the sampled token's logprob. vLLM lists the sampled token first and
the rest by rank, so rows are sorted here before use. Per-token signals:

- `margin`: logprob of the best minus the second-best alternative (the top-1/top-2 logit gap, temperature-free).
  With k=1 the second-best is unknown; the remaining probability mass stands in for it, which makes the margin a
  lower bound (the true runner-up holds at most that mass) — negative when the one reported token holds less than
  half the mass.
- `entropy`: entropy over the k alternatives plus one tail bucket holding the remaining mass. This is a lower bound
  on the full-vocabulary entropy (the tail is spread over many tokens, not one); it is exact when the tail is empty.
- `sampled_logprob` / `sampled_prob`: the chosen token's logprob and probability.

Window aggregates: mean token logprob (length-biased: one bad token among many barely moves it), and quantiles of
the per-token probability — minimum, p10, p25 — which the weakest tokens decide (Gupta et al., ICLR 2024, find
token-level quantiles the better uncertainty signal). `-inf` logprobs (and vLLM's -9999.0 floor) are probability 0;
an empty window has no evidence and aggregates to NaN with `tokens == 0`, which callers must check.

Under a grammar (structured outputs) the logprobs are the masked distribution's: a token the grammar forces has
logprob 0 and every reported alternative at the floor. Such a token says nothing about the model, and a hold-back
window of them (`{"queue": "` before the first real choice) would find every answer certain: `hold_back_window`
takes the first N tokens that had an alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGPROB_FLOOR = -9999.0  # vLLM's JSON stand-in for -inf


@dataclass(frozen=True)
class TokenSignals:
    """Per-token signals, each of shape (T,)."""

    margin: np.ndarray
    entropy: np.ndarray
    sampled_logprob: np.ndarray
    forced: np.ndarray | None = None  # (T,) bool: the token was the only one allowed (a grammar forced it)

    @property
    def sampled_prob(self) -> np.ndarray:
        return np.exp(self.sampled_logprob)

    def __len__(self) -> int:
        return int(self.sampled_logprob.shape[0])

    def window(self, start: int = 0, stop: int | None = None) -> TokenSignals:
        return self._where(slice(start, stop))

    def choices(self) -> TokenSignals:
        """The tokens that had an alternative (all of them, without a grammar)."""
        return self if self.forced is None else self._where(~self.forced)

    def _where(self, index) -> TokenSignals:
        return TokenSignals(self.margin[index], self.entropy[index], self.sampled_logprob[index],
                            None if self.forced is None else self.forced[index])


def is_forced(alternatives: list[float]) -> bool:
    """A token whose reported alternatives (the sampled one first, as vLLM lists them) are all at the floor but the
    sampled one: the grammar allowed nothing else. Unknowable from one alternative (k = 1): not forced."""
    return len(alternatives) > 1 and all(logprob <= LOGPROB_FLOOR for logprob in alternatives[1:])


def hold_back_window(signals: TokenSignals, tokens: int | None) -> TokenSignals:
    """The window a hold-back decides on: the first `tokens` tokens that had an alternative (None: all of them);
    an answer whose every token was forced is certain, and is judged on its forced tokens."""
    chosen = signals.choices()
    return chosen.window(0, tokens) if len(chosen) or not len(signals) else signals.window(0, tokens)


def token_signals(top_logprobs: np.ndarray, sampled_logprobs: np.ndarray) -> TokenSignals:
    """Per-token signals from the reported alternatives.

    Args:
        top_logprobs: (T, k) logprobs of the k reported alternatives per token, in any order; k >= 1.
        sampled_logprobs: (T,) logprob of the token that was generated.
    """
    top = _clean(np.asarray(top_logprobs, dtype=np.float64))  # (T, k)
    sampled = _clean(np.asarray(sampled_logprobs, dtype=np.float64))  # (T,)
    if top.ndim != 2 or top.shape[0] != sampled.shape[0]:
        raise ValueError(f"top_logprobs must be (T, k) and sampled_logprobs (T,); got {top.shape} and "
                         f"{sampled.shape}")
    if top.shape[0] == 0:
        empty = np.zeros(0)
        return TokenSignals(empty, empty, empty, np.zeros(0, dtype=bool))
    if top.shape[1] == 0:
        raise ValueError("top_logprobs needs at least one alternative per token (k >= 1)")
    top = -np.sort(-top, axis=1)  # (T, k) best first
    probs = np.exp(top)  # (T, k)
    tail = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)  # (T,) mass outside the reported alternatives
    with np.errstate(divide="ignore"):
        tail_logprob = np.log(tail)  # -inf where the top-k hold all the mass
    # The reported second alternative; where there is none (k = 1, or a short row padded with -inf) the tail mass
    # stands in for it, an upper bound on any one unreported token.
    runner_up = np.where(np.isneginf(top[:, 1]), tail_logprob, top[:, 1]) if top.shape[1] > 1 else tail_logprob
    margin = top[:, 0] - runner_up  # (T,) +inf when nothing else has any mass
    entropy = _plogp(probs).sum(axis=1) + _plogp(tail)  # (T,)
    # forced: the best alternative holds everything and a second one was reported at the floor (k = 1 cannot tell)
    forced = np.isneginf(top[:, 1]) & (top[:, 0] == 0.0) if top.shape[1] > 1 else np.zeros(len(top), dtype=bool)
    return TokenSignals(margin=margin, entropy=entropy, sampled_logprob=sampled, forced=forced)


def signals_from_rows(top_rows: list[list[float]], sampled_logprobs: list[float]) -> TokenSignals:
    """`token_signals` from ragged per-token lists (as JSON carries them); short rows are padded with -inf."""
    width = max((len(row) for row in top_rows), default=1) or 1
    top = np.full((len(top_rows), width), -np.inf)  # (T, k)
    for index, row in enumerate(top_rows):
        top[index, :len(row)] = row
    return token_signals(top, np.asarray(sampled_logprobs, dtype=np.float64))


@dataclass(frozen=True)
class WindowSignals:
    """Aggregates over a window of tokens. All NaN when `tokens == 0`."""

    tokens: int
    mean_logprob: float
    min_prob: float
    p10_prob: float
    p25_prob: float
    mean_margin: float
    min_margin: float
    mean_entropy: float
    max_entropy: float


def aggregate(signals: TokenSignals) -> WindowSignals:
    """Window aggregates; a window is `signals.window(start, stop)` (the first N held-back tokens, say)."""
    if len(signals) == 0:
        nan = float("nan")
        return WindowSignals(0, nan, nan, nan, nan, nan, nan, nan, nan)
    probs = signals.sampled_prob
    return WindowSignals(
        tokens=len(signals),
        mean_logprob=float(signals.sampled_logprob.mean()),
        min_prob=float(probs.min()),
        p10_prob=float(np.quantile(probs, 0.10)),
        p25_prob=float(np.quantile(probs, 0.25)),
        mean_margin=float(np.mean(np.minimum(signals.margin, _MARGIN_CAP))),
        min_margin=float(signals.margin.min()),
        mean_entropy=float(signals.entropy.mean()),
        max_entropy=float(signals.entropy.max()),
    )


_MARGIN_CAP = 50.0  # a margin of +inf (no competitor at all) counts as 50 nats in a mean, so one token can't dominate


def _clean(logprobs: np.ndarray) -> np.ndarray:
    """NaN is refused; vLLM's -9999.0 floor and anything below it become -inf; positive values (rounding) become 0."""
    if np.isnan(logprobs).any():
        raise ValueError("logprobs contain NaN")
    cleaned = np.where(logprobs <= LOGPROB_FLOOR, -np.inf, logprobs)
    return np.minimum(cleaned, 0.0)


def _plogp(probs: np.ndarray) -> np.ndarray:
    """-p·log p with 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        values = -probs * np.log(probs)
    return np.where(probs > 0, values, 0.0)
