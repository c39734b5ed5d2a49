"""Routing evaluation: whole-answer accuracy against the share of requests sent to the teacher.

For a router that escalates the least confident requests first, sending a fraction f of traffic to the teacher
gives accuracy acc(f) = mean over requests of (teacher correct if escalated else student correct). Compared with
two references: random routing (a straight line from the student's to the teacher's accuracy) and the oracle
(escalates exactly the requests the student gets wrong and the teacher gets right, first).

Figures, as RouteLLM defines them (Ong et al., 2024):
- PGR(f) = (acc(f) − acc_student) / (acc_teacher − acc_student): the performance gap recovered at f;
- APGR: the mean of PGR over an even grid of f from 0 to 1 (random routing scores 0.5 by construction);
- CPT(x): the smallest teacher fraction whose PGR reaches x (CPT(50 %), CPT(80 %)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_POINTS = 101  # f = 0, 0.01, ..., 1


@dataclass(frozen=True)
class RoutingCurve:
    fractions: np.ndarray  # (G,) teacher fractions
    accuracy: np.ndarray  # (G,) whole-answer accuracy at each fraction
    student_accuracy: float
    teacher_accuracy: float

    def pgr(self) -> np.ndarray:
        gap = self.teacher_accuracy - self.student_accuracy
        if gap <= 0:
            raise ValueError(f"the teacher ({self.teacher_accuracy:.3f}) is not better than the student "
                             f"({self.student_accuracy:.3f}) here: there is no gap to recover")
        return (self.accuracy - self.student_accuracy) / gap

    def apgr(self) -> float:
        return float(np.mean(self.pgr()))

    def cpt(self, recovered: float) -> float:
        """Smallest teacher fraction recovering `recovered` of the gap (1.0 if never reached before the end)."""
        reached = np.nonzero(self.pgr() >= recovered - 1e-12)[0]
        return float(self.fractions[reached[0]]) if reached.size else 1.0


def routing_curve(confidence: np.ndarray, student_correct: np.ndarray, teacher_correct: np.ndarray,
                  grid_points: int = GRID_POINTS) -> RoutingCurve:
    """The curve of a router that escalates the lowest `confidence` first.

    Args:
        confidence: (N,) the router's score per request; lower means less sure of the student.
        student_correct, teacher_correct: (N,) whether each backend's whole answer was right.
    """
    scores = np.asarray(confidence, dtype=np.float64)
    student = np.asarray(student_correct, dtype=np.float64)
    teacher = np.asarray(teacher_correct, dtype=np.float64)
    if not scores.shape == student.shape == teacher.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError("confidence, student_correct and teacher_correct must be equal-length, non-empty 1-D arrays")
    order = np.argsort(scores, kind="stable")  # least confident first
    gain = (teacher - student)[order]  # what escalating each request changes
    gained = np.concatenate([[0.0], np.cumsum(gain)])  # (N+1,) after escalating the first m requests
    fractions = np.linspace(0.0, 1.0, grid_points)
    counts = fractions * scores.size
    # Between whole requests the curve is interpolated: a router can escalate a request with some probability.
    accuracy = (student.sum() + np.interp(counts, np.arange(scores.size + 1), gained)) / scores.size
    return RoutingCurve(fractions, accuracy, float(student.mean()), float(teacher.mean()))


def random_curve(student_correct: np.ndarray, teacher_correct: np.ndarray,
                 grid_points: int = GRID_POINTS) -> RoutingCurve:
    """Random routing in expectation: the straight line between the two accuracies."""
    student_accuracy, teacher_accuracy = float(np.mean(student_correct)), float(np.mean(teacher_correct))
    fractions = np.linspace(0.0, 1.0, grid_points)
    return RoutingCurve(fractions, student_accuracy + fractions * (teacher_accuracy - student_accuracy),
                        student_accuracy, teacher_accuracy)


def oracle_curve(student_correct: np.ndarray, teacher_correct: np.ndarray,
                 grid_points: int = GRID_POINTS) -> RoutingCurve:
    """The best possible router: escalates where the teacher helps, then where it changes nothing, then the rest."""
    student = np.asarray(student_correct, dtype=np.float64)
    teacher = np.asarray(teacher_correct, dtype=np.float64)
    return routing_curve(-(teacher - student), student, teacher, grid_points)
