"""Threshold calibration hits its target teacher fraction on the calibration set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.calibration import calibrate_threshold, teacher_fraction


def check_threshold_hits_the_target_within_ties(values: np.ndarray, target: float, threshold: float) -> None:
    """`round(target * n)` scores are escalated (score < threshold), except that a tie group straddling that count
    stays whole on the kept side: never more escalations than asked, and escalating the lowest kept score's tie
    group as well would be more than asked. Without ties that is exactly the count asked for."""
    wanted = round(target * len(values))
    escalated = int((values < threshold).sum())
    assert escalated <= wanted, f"{escalated} escalated, {wanted} asked"
    kept = values[values >= threshold]
    if kept.size:
        next_group = int((values <= kept.min()).sum())
        assert next_group > wanted, f"{escalated} escalated, {wanted} asked, and {next_group} with the next tie group"


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-50, 50), min_size=1, max_size=300), target=st.floats(0.0, 1.0))
def test_calibrated_threshold_hits_the_target_within_ties(scores, target):
    values = np.array(scores)
    threshold = calibrate_threshold(values, target)
    check_threshold_hits_the_target_within_ties(values, target, threshold)
    if len(np.unique(values)) == len(values):  # no ties: exact, and the same as a share
        assert teacher_fraction(values, threshold) == pytest.approx(round(target * len(values)) / len(values))


@settings(max_examples=100, deadline=None)
@given(groups=st.lists(st.tuples(st.floats(-50, 50), st.integers(1, 6)), min_size=1, max_size=40),
       target=st.floats(0.0, 1.0))
def test_tie_groups_stay_whole_on_the_kept_side(groups, target):
    """Scores drawn as tie groups, so that most draws have a group straddling the target count."""
    values = np.repeat([value for value, _ in groups], [count for _, count in groups])
    check_threshold_hits_the_target_within_ties(values, target, calibrate_threshold(values, target))


def test_tie_check_fails_when_ties_escalate_nothing():
    """A calibration broken to escalate nothing whenever scores tie: the old upper-side check (never more than
    asked) passes it; the lower side must not."""
    values = np.array([0.1, 0.2, 0.2, 0.2, 0.5, 0.9])
    check_threshold_hits_the_target_within_ties(values, 0.5, calibrate_threshold(values, 0.5))
    broken = float(-np.inf)
    assert teacher_fraction(values, broken) <= 0.5
    with pytest.raises(AssertionError, match="with the next tie group"):
        check_threshold_hits_the_target_within_ties(values, 0.5, broken)


def test_tie_check_fails_when_the_threshold_sits_on_the_last_escalated_score():
    """A calibration broken to put the threshold on the last escalated score instead of halfway to the next: one
    escalation too few, or a whole tie group too few."""
    values = np.array([0.1, 0.3, 0.3, 0.6, 0.7, 0.9, 0.95])
    for target in (3 / 7, 4 / 7):  # the last escalated score is a tied 0.3, then a lone 0.6
        order = np.sort(values)
        broken = float(order[round(target * len(values)) - 1])
        with pytest.raises(AssertionError):
            check_threshold_hits_the_target_within_ties(values, target, broken)


def test_adjacent_scores_are_split_at_the_target():
    """Halfway between two adjacent floats rounds to the lower one, which then was kept: one escalation short."""
    values = np.array([1.0, np.nextafter(1.0, 2.0)])
    check_threshold_hits_the_target_within_ties(values, 0.5, calibrate_threshold(values, 0.5))


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
