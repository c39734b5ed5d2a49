"""Fitting confidence scorers on labelled records (offline: `kdgate router calibrate` and `kdgate router eval`).

scikit-learn does the fitting (the `kdgate[router]` extra); the fitted numbers go into plain scorers that the
gateway applies with numpy alone, so the serving path never imports it.
"""

from __future__ import annotations

import numpy as np

from router.evaluation import routing_curve
from router.scorers import FEATURES, IsotonicScorer, LogisticScorer, Scorer, SignalScorer, feature_vector, signal_value
from router.signals import WindowSignals

SCORER_KINDS = ("signal", "logistic", "isotonic")


def fit_logistic(windows: list[WindowSignals], correct: np.ndarray) -> LogisticScorer:
    """Logistic regression of P(student right) on the standardised window signals."""
    from sklearn.linear_model import LogisticRegression

    x = np.stack([feature_vector(window) for window in windows])  # (N, F)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    labels = _labels(correct)
    model = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, labels)
    return LogisticScorer(mean=tuple(mean), scale=tuple(scale), coef=tuple(model.coef_[0]),
                          intercept=float(model.intercept_[0]))


def fit_isotonic(windows: list[WindowSignals], correct: np.ndarray, signal: str) -> IsotonicScorer:
    """One signal mapped monotonically onto P(student right)."""
    from sklearn.isotonic import IsotonicRegression

    x = np.array([signal_value(window, signal) for window in windows])
    model = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, _labels(correct))
    return IsotonicScorer(signal=signal, x=tuple(model.X_thresholds_), y=tuple(model.y_thresholds_))


def best_signal(windows: list[WindowSignals], student_correct: np.ndarray, teacher_correct: np.ndarray) -> str:
    """The single signal whose routing curve recovers the most of the gap (APGR) on these records."""
    def apgr(signal: str) -> float:
        scores = np.array([signal_value(window, signal) for window in windows])
        return routing_curve(scores, student_correct, teacher_correct).apgr()

    return max(FEATURES, key=apgr)


def fit_scorer(kind: str, windows: list[WindowSignals], student_correct: np.ndarray, teacher_correct: np.ndarray,
               signal: str | None = None) -> Scorer:
    """A scorer of `kind`; for `signal` and `isotonic`, `signal` (default: the best one on these records)."""
    if kind not in SCORER_KINDS:
        raise ValueError(f"unknown scorer kind {kind!r}; choose one of {', '.join(SCORER_KINDS)}")
    if kind == "logistic":
        return fit_logistic(windows, student_correct)
    signal = signal or best_signal(windows, student_correct, teacher_correct)
    return SignalScorer(signal) if kind == "signal" else fit_isotonic(windows, student_correct, signal)


def _labels(correct: np.ndarray) -> np.ndarray:
    labels = np.asarray(correct, dtype=np.int64)
    if labels.min() == labels.max():
        raise ValueError("the labelled records are all right or all wrong: nothing to fit a confidence score on; "
                         "use more (or more varied) records")
    return labels
