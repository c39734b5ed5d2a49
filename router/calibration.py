"""Calibrate a confidence threshold to a target share of teacher traffic.

A request goes to the teacher when its confidence score is *below* the threshold. On a calibration set of scores
the threshold is chosen so that exactly `round(target * n)` requests fall below it (ties broken towards fewer
escalations), so the realised fraction on that set is the target to within 1/n. RouteLLM calibrates its
prompt-only routers the same way; here the score is a post-generation confidence over the student's first tokens.
"""

from __future__ import annotations

import numpy as np


def calibrate_threshold(scores: np.ndarray, target_teacher_fraction: float) -> float:
    """The threshold sending `target_teacher_fraction` of `scores` to the teacher (score < threshold)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no calibration scores; record some traffic or pass a labelled data set")
    if np.isnan(values).any():
        raise ValueError("calibration scores contain NaN; drop requests with no generated tokens first")
    if not 0.0 <= target_teacher_fraction <= 1.0:
        raise ValueError(f"target_teacher_fraction must be between 0 and 1, got {target_teacher_fraction}")
    escalated = int(round(target_teacher_fraction * values.size))
    if escalated == 0:
        return float(-np.inf)
    if escalated == values.size:
        return float(np.inf)
    # Halfway between the last escalated score and the first kept one; equal scores stay together (kept).
    low, high = values[escalated - 1], values[escalated]
    return float(high if low == high else (low + high) / 2)


def teacher_fraction(scores: np.ndarray, threshold: float) -> float:
    values = np.asarray(scores, dtype=np.float64)
    return float(np.mean(values < threshold)) if values.size else 0.0
