"""Routing curves: random scores land on the random line, perfect scores on the oracle, APGR and CPT as defined."""

from __future__ import annotations

import numpy as np
import pytest

from router.evaluation import oracle_curve, random_curve, routing_curve


def labelled(seed: int, n: int = 4000, student_accuracy: float = 0.7, teacher_accuracy: float = 0.95):
    rng = np.random.default_rng(seed)
    return rng.random(n) < student_accuracy, rng.random(n) < teacher_accuracy


def test_random_line_has_apgr_one_half():
    student, teacher = labelled(0)
    assert random_curve(student, teacher).apgr() == pytest.approx(0.5)


def test_uninformative_scores_track_the_random_line():
    student, teacher = labelled(1)
    scores = np.random.default_rng(2).random(student.size)
    assert routing_curve(scores, student, teacher).apgr() == pytest.approx(0.5, abs=0.03)


def test_oracle_is_an_upper_bound_and_recovers_everything_early():
    student, teacher = labelled(3)
    oracle = oracle_curve(student, teacher)
    scores = np.random.default_rng(4).random(student.size)
    assert np.all(oracle.accuracy >= routing_curve(scores, student, teacher).accuracy - 1e-12)
    # Escalating only where the teacher helps beats the teacher itself (it keeps the student's answers where the
    # teacher errs), so the whole gap is recovered after (helps − hurts) of the traffic.
    helps, hurts = np.mean(teacher & ~student), np.mean(student & ~teacher)
    assert oracle.cpt(1.0) == pytest.approx(helps - hurts, abs=0.011)
    assert oracle.accuracy.max() == pytest.approx(student.mean() + helps)


def test_curve_ends_at_the_two_accuracies():
    student, teacher = labelled(5)
    curve = routing_curve(np.zeros(student.size), student, teacher)
    assert curve.accuracy[0] == pytest.approx(student.mean()) and curve.accuracy[-1] == pytest.approx(teacher.mean())


def test_a_good_score_beats_random_and_cpt_is_monotone():
    student, teacher = labelled(6)
    noise = np.random.default_rng(7).normal(scale=0.5, size=student.size)
    curve = routing_curve(student.astype(float) + noise, student, teacher)  # wrong answers score lower, noisily
    assert curve.apgr() > 0.6
    assert curve.cpt(0.5) <= curve.cpt(0.8) <= 1.0


def test_no_gap_is_reported_not_divided_by_zero():
    both = np.ones(10, dtype=bool)
    with pytest.raises(ValueError, match="no gap"):
        routing_curve(np.zeros(10), both, both).apgr()
