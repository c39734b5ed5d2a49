"""Confidence scores: one number per request from the window signals of the student's first tokens.

Higher means more sure of the student. Three kinds, all cheap enough to run per request without any ML library:

- `SignalScorer`: one signal as it is (`min_prob`, `p10_prob`, `mean_logprob`, ...), negated for the entropies,
  so that every score grows with confidence. The fixed formula: nothing to fit, nothing to go stale.
- `LogisticScorer`: a logistic regression over all the window signals (standardised), fitted on labelled
  requests (was the student's whole answer right?); the score is P(student right).
- `IsotonicScorer`: one signal mapped through an isotonic (monotone) fit onto P(student right): the same order as
  the signal up to ties, but a threshold that reads as a probability.

Fitting lives in `router.fitting` (scikit-learn); the fitted numbers travel in the policy file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from router.signals import WindowSignals

FEATURES = ("mean_logprob", "min_prob", "p10_prob", "p25_prob", "mean_margin", "min_margin", "mean_entropy",
            "max_entropy")
LOWER_IS_SURER = frozenset({"mean_entropy", "max_entropy"})
MARGIN_CAP = 50.0  # a margin of +inf (nothing else had any mass) counts as 50 nats


def feature_vector(window: WindowSignals, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    """(len(features),) the window's signals, margins capped so that every entry is finite."""
    values = [getattr(window, name) for name in features]
    return np.minimum(np.array(values, dtype=np.float64), MARGIN_CAP)


def signal_value(window: WindowSignals, signal: str) -> float:
    """One signal oriented so that higher is surer."""
    value = min(float(getattr(window, signal)), MARGIN_CAP)
    return -value if signal in LOWER_IS_SURER else value


class Scorer(Protocol):
    kind: str

    def score(self, window: WindowSignals) -> float:
        """Confidence in the student; NaN when the window holds no tokens (no evidence)."""
        ...


@dataclass(frozen=True)
class SignalScorer:
    signal: str
    kind: Literal["signal"] = "signal"

    def __post_init__(self) -> None:
        _check_signal(self.signal)

    def score(self, window: WindowSignals) -> float:
        return math.nan if window.tokens == 0 else signal_value(window, self.signal)


@dataclass(frozen=True)
class LogisticScorer:
    mean: tuple[float, ...]  # per feature, for standardising
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    features: tuple[str, ...] = FEATURES
    kind: Literal["logistic"] = "logistic"

    def __post_init__(self) -> None:
        for name in self.features:
            _check_signal(name)
        if not len(self.features) == len(self.mean) == len(self.scale) == len(self.coef):
            raise ValueError("a logistic scorer needs one mean, scale and coefficient per feature")

    def score(self, window: WindowSignals) -> float:
        if window.tokens == 0:
            return math.nan
        x = feature_vector(window, self.features)  # (F,)
        z = float(np.dot((x - np.array(self.mean)) / np.array(self.scale), np.array(self.coef)) + self.intercept)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class IsotonicScorer:
    signal: str
    x: tuple[float, ...]  # the fit's breakpoints, increasing
    y: tuple[float, ...]  # P(student right) at each breakpoint, non-decreasing
    kind: Literal["isotonic"] = "isotonic"

    def __post_init__(self) -> None:
        _check_signal(self.signal)
        if len(self.x) != len(self.y) or not self.x:
            raise ValueError("an isotonic scorer needs matching, non-empty `x` and `y` breakpoints")

    def score(self, window: WindowSignals) -> float:
        if window.tokens == 0:
            return math.nan
        return float(np.interp(signal_value(window, self.signal), self.x, self.y))


def _check_signal(name: str) -> None:
    if name not in FEATURES:
        raise ValueError(f"unknown confidence signal {name!r}; choose one of {', '.join(FEATURES)}")
