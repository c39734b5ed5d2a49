"""Calibrate a confidence threshold to a target share of teacher traffic.

A request goes to the teacher when its confidence score is *below* the threshold. On a calibration set of scores
the threshold is chosen so that exactly `round(target * n)` requests fall below it (ties broken towards fewer
escalations), so the realised fraction on that set is the target to within 1/n. RouteLLM calibrates its
prompt-only routers the same way; here the score is a post-generation confidence over the student's first tokens.
"""

from __future__ import annotations

import numpy as np


def calibrate_threshold(scores: np.ndarray, target_teacher_fraction: float, weights: np.ndarray | None = None
                        ) -> float:
    """The threshold sending `target_teacher_fraction` of `scores` to the teacher (score < threshold). With
    `weights` (how many requests each score stands for), that share of the total weight."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    values = np.asarray(scores, dtype=np.float64)[order]
    if values.size == 0:
        raise ValueError("no calibration scores; record some traffic or pass a labelled data set")
    if np.isnan(values).any():
        raise ValueError("calibration scores contain NaN; drop requests with no generated tokens first")
    if not 0.0 <= target_teacher_fraction <= 1.0:
        raise ValueError(f"target_teacher_fraction must be between 0 and 1, got {target_teacher_fraction}")
    if weights is None:
        escalated = int(round(target_teacher_fraction * values.size))
    else:  # the number of lowest scores whose weight comes closest to the target share of the whole
        cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=np.float64)[order])])
        escalated = int(np.argmin(np.abs(cumulative - target_teacher_fraction * cumulative[-1])))
    if escalated == 0:
        return float(-np.inf)
    if escalated == values.size:
        return float(np.inf)
    # Halfway between the last escalated score and the first kept one; equal scores stay together (kept). Between
    # adjacent floats the halfway point rounds down to `low`, which would keep it: then the kept score itself.
    low, high = values[escalated - 1], values[escalated]
    halfway = (low + high) / 2
    return float(halfway if low < halfway else high)


def teacher_fraction(scores: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> float:
    values = np.asarray(scores, dtype=np.float64)
    if not values.size:
        return 0.0
    return float(np.average(values < threshold, weights=weights))
