"""Online recalibration: tracks the target under drift, moves in bounded steps, ignores scoreless requests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.calibration import calibrate_threshold
from router.online import OnlineRecalibration, OnlineSettings


def run(scores: np.ndarray, threshold: float, online: OnlineRecalibration | None) -> tuple[np.ndarray, list[float]]:
    escalated, thresholds = [], []
    for score in scores:
        escalate = score < threshold
        escalated.append(escalate)
        if online is not None:
            threshold = online.observe(float(score), escalate, threshold)
        thresholds.append(threshold)
    return np.array(escalated), thresholds


@pytest.mark.parametrize("shift", [-0.6, 0.0, 0.8])
def test_realised_fraction_is_within_3_points_of_target_after_500_requests(shift):
    rng = np.random.default_rng(0)
    threshold = calibrate_threshold(rng.normal(0, 1, 2000), 0.2)  # calibrated on yesterday's traffic
    live = rng.normal(shift, 1.3, 2500)  # today's traffic has drifted
    frozen, _ = run(live, threshold, None)
    online, _ = run(live, threshold, OnlineRecalibration(OnlineSettings(target_teacher_fraction=0.2)))
    assert abs(online[500:].mean() - 0.2) <= 0.03
    if shift:  # without recalibration the drift shows
        assert abs(frozen[500:].mean() - 0.2) > 0.05


def test_each_step_passes_at_most_max_step_of_the_window():
    rng = np.random.default_rng(1)
    settings = OnlineSettings(target_teacher_fraction=0.5, window=200, min_samples=50, max_step=0.02)
    recalibration = OnlineRecalibration(settings)
    threshold = -10.0  # far off: nothing escalates
    for score in rng.normal(0, 1, 400):
        before = threshold
        threshold = recalibration.observe(float(score), score < threshold, threshold)
        window = np.array(recalibration.scores)
        moved = abs(np.mean(window < threshold) - np.mean(window < before))
        assert moved <= 0.02 + 1.0 / len(window)


def test_scoreless_requests_count_but_do_not_move_the_threshold():
    recalibration = OnlineRecalibration(OnlineSettings(target_teacher_fraction=0.2, window=10, min_samples=1))
    assert recalibration.observe(math.nan, True, 0.5) == 0.5
    assert recalibration.realised_teacher_fraction() == 1.0
    assert not recalibration.scores


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_samples"):
        OnlineSettings(target_teacher_fraction=0.2, window=10, min_samples=20)
    with pytest.raises(ValueError, match="max_step"):
        OnlineSettings(target_teacher_fraction=0.2, max_step=0)
