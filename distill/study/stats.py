"""Means with t intervals, paired differences and the share of the teacher–SFT gap, over seeds.

Runs pair by seed: arm and baseline of one seed share the initialisation, the held-out split and the batch order,
so the paired difference removes what the seed does to both. With n seeds the intervals use Student's t with
n − 1 degrees of freedom; one seed gives a mean and no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None
    high: float | None
    n: int

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_p(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided paired t-test of `values` against `baseline` (same seeds, same order); None below two pairs or
    when every difference is the same."""
    from scipy import stats

    differences = [a - b for a, b in zip(values, baseline, strict=True)]
    if len(differences) < 2 or max(differences) - min(differences) < 1e-12:
        return None
    return float(stats.ttest_rel(values, baseline).pvalue)


def gap_recovered(values: Sequence[float], baseline: Sequence[float], teacher: Sequence[float]) -> Interval | None:
    """Per seed, (arm − SFT) / (teacher − SFT), each seed against its own teacher: 1 is the teacher, 0 is SFT; None
    when SFT reaches the teacher."""
    shares = [(value - base) / (best - base) for value, base, best in zip(values, baseline, teacher, strict=True)
              if best > base]
    return interval(shares) if len(shares) == len(values) else None
