"""Online recalibration: keep the realised teacher fraction on target as live traffic drifts.

A threshold calibrated offline sends the target share of *calibration* traffic to the teacher; live traffic
drifts (new topics, a new student), and the share drifts with it. The gateway keeps a rolling window of live
confidence scores and, after each request, moves the threshold toward the one that would send exactly the target
share of that window to the teacher. The step is bounded in rank, not in score units: one request moves the
threshold past at most `max_step` of the window's scores, so a burst of odd requests cannot swing routing, and the
same setting works for a probability score and a log-probability one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from router.calibration import calibrate_threshold


@dataclass(frozen=True)
class OnlineSettings:
    target_teacher_fraction: float
    window: int = 500  # live scores kept; the realised fraction is measured over the same window
    min_samples: int = 100  # no adjustment before this many scores: early quantiles are noise
    max_step: float = 0.01  # largest move per request, as a share of the window's scores

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_teacher_fraction <= 1.0:
            raise ValueError("`target_teacher_fraction` must be between 0 and 1")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError("`min_samples` must be between 1 and `window`")
        if not 0.0 < self.max_step <= 1.0:
            raise ValueError("`max_step` must be in (0, 1]")


class OnlineRecalibration:
    def __init__(self, settings: OnlineSettings):
        self.settings = settings
        self.scores: deque[float] = deque(maxlen=settings.window)
        self.escalated: deque[bool] = deque(maxlen=settings.window)

    def observe(self, score: float, escalated: bool, threshold: float) -> float:
        """Record one routed request; return the threshold to use from now on."""
        self.escalated.append(escalated)
        if math.isnan(score):  # no tokens, no score: counts toward the realised fraction, not the quantile
            return threshold
        self.scores.append(score)
        if len(self.scores) < self.settings.min_samples:
            return threshold
        window = np.fromiter(self.scores, dtype=np.float64)
        below_now = float(np.mean(window < threshold))
        step = self.settings.max_step
        wanted = min(max(self.settings.target_teacher_fraction, below_now - step), below_now + step)
        return calibrate_threshold(window, wanted)

    def realised_teacher_fraction(self) -> float:
        return float(np.mean(self.escalated)) if self.escalated else math.nan
