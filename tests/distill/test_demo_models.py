"""The committed demo models keep the contrast the project relies on: a strong teacher, a clearly weaker student."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.demo import task
from distill.demo.evaluate import evaluate_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(demo_dirs):
    tickets = task.take("test", 300, seed=7)  # not the README's evaluation set
    scores = {}
    for name, directory in zip(("student", "teacher"), demo_dirs, strict=True):
        model = AutoModelForCausalLM.from_pretrained(str(directory))
        scores[name] = evaluate_model(model, AutoTokenizer.from_pretrained(str(directory)), tickets)
    return scores


def test_teacher_is_accurate(results):
    assert results["teacher"]["exact_match"] >= 0.93, results["teacher"]


def test_student_is_clearly_weaker_but_useful(results):
    student, teacher = results["student"]["exact_match"], results["teacher"]["exact_match"]
    # The distilled student (93 % on the README's test split) still leaves the teacher a gap for routing to close.
    assert 0.55 <= student <= 0.95, results["student"]
    assert teacher - student >= 0.04


def test_the_gap_is_in_the_multi_hop_tickets(results):
    by_shape = results["student"]["by_shape"]
    for shape in ("two_orders", "two_orders_renamed"):
        assert by_shape["one_order"]["exact_match"] > by_shape[shape]["exact_match"] + 0.05, by_shape
