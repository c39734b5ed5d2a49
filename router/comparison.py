"""Compare routing policies on labelled records: fit on one set, judge on another.

For each prefix length N and scorer kind, the scorer is fitted (or, for a fixed signal, chosen) on the fit records,
its threshold calibrated there to the target teacher fraction, and both are judged on the held-out records: the
accuracy-vs-teacher-fraction curve, APGR, CPT(50 %), CPT(80 %), and the teacher fraction the calibrated threshold
actually sends on held-out traffic. Random routing and the oracle are the references.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.calibration import calibrate_threshold, teacher_fraction
from router.evaluation import RoutingCurve, oracle_curve, random_curve, routing_curve
from router.fitting import fit_scorer
from router.records import RouteRecord, labelled
from router.scorers import Scorer
from router.signals import WindowSignals, aggregate, hold_back_window


@dataclass(frozen=True)
class PolicyResult:
    name: str  # "confidence N=4 logistic", "random", "oracle"
    prefix_tokens: int | None
    scorer: Scorer | None
    curve: RoutingCurve
    threshold: float | None = None  # calibrated on the fit records
    fit_teacher_fraction: float | None = None  # what that threshold sends on the fit records themselves
    held_out_scores: np.ndarray | None = None  # (N,) the scorer's score for each held-out record
    held_out_teacher_fraction: float | None = None  # what that threshold sends on the held-out records

    def row(self) -> dict:
        return {"policy": self.name, "prefix_tokens": self.prefix_tokens, "apgr": self.curve.apgr(),
                "cpt50": self.curve.cpt(0.5), "cpt80": self.curve.cpt(0.8), "threshold": self.threshold,
                "held_out_teacher_fraction": self.held_out_teacher_fraction,
                "scorer": None if self.scorer is None else vars(self.scorer)}


def windows(records: list[RouteRecord], prefix_tokens: int | None) -> list[WindowSignals]:
    return [aggregate(hold_back_window(record.signals(), prefix_tokens)) for record in records]


def scores_of(scorer: Scorer, windows_: list[WindowSignals]) -> np.ndarray:
    """(N,) scores; a window without tokens (no evidence) scores -inf, so it escalates first, as the gateway does."""
    values = np.array([scorer.score(window) for window in windows_], dtype=np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def compare(fit: list[RouteRecord], held_out: list[RouteRecord], prefixes: list[int | None], kinds: list[str],
            target_teacher_fraction: float) -> list[PolicyResult]:
    fit, held_out = labelled(fit, need_teacher=True), labelled(held_out, need_teacher=True)
    fit_student, fit_teacher = correct(fit)
    student, teacher = correct(held_out)
    results = [PolicyResult("random", None, None, random_curve(student, teacher)),
               PolicyResult("oracle", None, None, oracle_curve(student, teacher))]
    for prefix in prefixes:
        fit_windows, held_windows = windows(fit, prefix), windows(held_out, prefix)
        for kind in kinds:
            scorer = fit_scorer(kind, fit_windows, fit_student, fit_teacher)
            fit_scores = scores_of(scorer, fit_windows)
            threshold = calibrate_threshold(fit_scores, target_teacher_fraction)
            held_scores = scores_of(scorer, held_windows)
            results.append(PolicyResult(
                name=f"confidence N={prefix or 'full'} {kind}", prefix_tokens=prefix, scorer=scorer,
                curve=routing_curve(held_scores, student, teacher), threshold=threshold,
                fit_teacher_fraction=teacher_fraction(fit_scores, threshold), held_out_scores=held_scores,
                held_out_teacher_fraction=teacher_fraction(held_scores, threshold)))
    return results


def correct(records: list[RouteRecord]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([record.student_correct for record in records], dtype=np.float64),
            np.array([record.teacher_correct for record in records], dtype=np.float64))
