"""Fitting and comparing scorers on labelled records; the drift replay runs the gateway's own policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.comparison import compare, scores_of, windows
from router.drift import drift_report
from router.fitting import fit_isotonic, fit_logistic, fit_scorer
from router.scorers import FEATURES, feature_vector
from router.signals import WindowSignals
from tests.router.records_factory import synthetic_records

FIT, HELD_OUT = synthetic_records(600, seed=1), synthetic_records(600, seed=2)


def test_confidence_policies_beat_random_and_calibrate_on_held_out_traffic():
    results = {result.name: result for result in compare(FIT, HELD_OUT, [None], ["signal", "logistic"], 0.2)}
    assert results["random"].curve.apgr() == pytest.approx(0.5)
    for name in ("confidence N=full signal", "confidence N=full logistic"):
        assert results[name].curve.apgr() > 0.7
        assert results[name].fit_teacher_fraction == pytest.approx(0.2, abs=1 / 600)
        assert results[name].held_out_teacher_fraction == pytest.approx(0.2, abs=0.05)
    assert results["oracle"].curve.apgr() >= results["confidence N=full logistic"].curve.apgr()


def test_a_prefix_that_ends_before_the_evidence_sees_nothing():
    results = {result.name: result for result in compare(FIT, HELD_OUT, [2, None], ["logistic"], 0.2)}
    assert results["confidence N=2 logistic"].curve.apgr() < 0.6 < results["confidence N=full logistic"].curve.apgr()


def test_logistic_scorer_reproduces_sklearn_probabilities():
    from sklearn.linear_model import LogisticRegression

    fit_windows = windows(FIT, None)
    correct = np.array([record.student_correct for record in FIT])
    scorer = fit_logistic(fit_windows, correct)
    x = np.stack([feature_vector(window) for window in fit_windows])
    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, correct)
    expected = reference.predict_proba((x - mean) / scale)[:, 1]
    assert np.allclose(scores_of(scorer, fit_windows), expected, atol=1e-6)


def pool_adjacent_violators(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares non-decreasing fit of `y` on `x` at each point (equal x pooled first), written out here as
    the textbook pool-adjacent-violators algorithm, independently of scikit-learn."""
    groups, inverse = np.unique(x, return_inverse=True)
    blocks: list[list[float]] = []  # [sum of y, count, x groups] per pooled block
    for total, count in zip(np.bincount(inverse, weights=y), np.bincount(inverse), strict=True):
        blocks.append([total, count, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count, width = blocks.pop()
            blocks[-1] = [blocks[-1][0] + total, blocks[-1][1] + count, blocks[-1][2] + width]
    fitted = np.concatenate([[total / count] * width for total, count, width in blocks])
    assert fitted.shape == groups.shape
    return fitted[inverse]


def test_isotonic_scorer_is_monotone_in_its_signal():
    fit_windows = windows(FIT, None)
    correct = np.array([record.student_correct for record in FIT], dtype=float)
    scorer = fit_isotonic(fit_windows, correct, "min_prob")
    ordered = sorted(fit_windows, key=lambda window: window.min_prob)
    scores = scores_of(scorer, ordered)
    assert np.all(np.diff(scores) >= -1e-12) and scores.max() > scores.min()  # monotone, and not flat here
    expected = pool_adjacent_violators(np.array([window.min_prob for window in fit_windows]), correct)
    assert np.allclose(scores_of(scorer, fit_windows), expected, atol=1e-9)


def test_empty_windows_score_lowest_and_fitting_needs_both_outcomes():
    empty = WindowSignals(0, *([math.nan] * len(FEATURES)))
    scorer = fit_scorer("signal", windows(FIT, None), *(np.array([getattr(r, f) for r in FIT], dtype=float)
                                                        for f in ("student_correct", "teacher_correct")))
    assert scores_of(scorer, [empty])[0] == -np.inf
    with pytest.raises(ValueError, match="all right or all wrong"):
        fit_logistic(windows(FIT[:5], None), np.ones(5))
    with pytest.raises(ValueError, match="unknown scorer kind"):
        fit_scorer("forest", [], np.ones(1), np.ones(1))


def test_drift_replay_keeps_online_recalibration_on_target():
    fit_windows = windows(FIT, None)
    correct = np.array([record.student_correct for record in FIT], dtype=float)
    scorer = fit_logistic(fit_windows, correct)
    from router.calibration import calibrate_threshold

    threshold = calibrate_threshold(scores_of(scorer, fit_windows), 0.2)
    report = drift_report(scorer, None, threshold, HELD_OUT, 0.2, {"hard": 4.0})
    assert report["frozen"]["teacher_fraction_after_warm_up"] > 0.25  # more hard traffic, more escalations
    assert abs(report["online_error_points"]) <= 3
