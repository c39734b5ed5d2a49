"""Threshold calibration hits its target teacher fraction on the calibration set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.calibration import calibrate_threshold, teacher_fraction


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-50, 50), min_size=1, max_size=300), target=st.floats(0.0, 1.0))
def test_calibrated_threshold_hits_the_target_within_ties(scores, target):
    values = np.array(scores)
    threshold = calibrate_threshold(values, target)
    realised = teacher_fraction(values, threshold)
    wanted = round(target * len(values)) / len(values)
    if len(np.unique(values)) == len(values):  # no ties: exact
        assert realised == pytest.approx(wanted)
    else:  # ties stay together on the kept side, so never more escalations than asked
        assert realised <= wanted + 1e-12


def test_ends_of_the_range():
    scores = np.array([0.1, 0.5, 0.9])
    assert teacher_fraction(scores, calibrate_threshold(scores, 0.0)) == 0.0
    assert teacher_fraction(scores, calibrate_threshold(scores, 1.0)) == 1.0


@pytest.mark.parametrize(("scores", "target", "message"), [
    ([], 0.2, "no calibration scores"), ([0.1, float("nan")], 0.2, "NaN"), ([0.1], 1.5, "between 0 and 1")])
def test_bad_calibration_input_is_refused(scores, target, message):
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(np.array(scores), target)


def test_weights_fit_the_share_of_the_traffic_the_scores_stand_for():
    import numpy as np

    from router.calibration import calibrate_threshold, teacher_fraction

    # 10 low scores each standing for 1 request, 10 high ones for 4 (a 1-in-4 sample): 50 requests, 10 low
    scores = np.array([0.1 * index for index in range(10)] + [5 + 0.1 * index for index in range(10)])
    weights = np.array([1.0] * 10 + [4.0] * 10)
    threshold = calibrate_threshold(scores, 0.2, weights)
    assert teacher_fraction(scores, threshold, weights) == 0.2  # the low ten are 20 % of the traffic
    assert teacher_fraction(scores, threshold) == 0.5  # ... and half of the records
    assert calibrate_threshold(scores, 0.2) < 1.0  # unweighted: 4 of the 20 records
