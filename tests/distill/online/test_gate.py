"""The gate admits a candidate only when every check passes, and names each one that does not."""

from __future__ import annotations

import copy

import pytest

from distill.online.gate import judge
from distill.online.settings import GateSettings

ACTIVE = {"heldout": {"examples": 40, "kl_to_teacher": 0.10, "token_agreement": 0.95, "answer_agreement": 0.8},
          "golden": {"by_slice": {"one_order": 0.99, "shifted": 0.40}, "valid": 1.0, "ece": 0.02,
                     "exact_match": 0.8}}
BETTER = {"heldout": {"examples": 40, "kl_to_teacher": 0.05, "token_agreement": 0.97, "answer_agreement": 0.9},
          "golden": {"by_slice": {"one_order": 0.985, "shifted": 0.90}, "valid": 1.0, "ece": 0.025,
                     "exact_match": 0.95}}


def changed(path: tuple[str, ...], value) -> dict:
    candidate = copy.deepcopy(BETTER)
    node = candidate
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return candidate


def test_a_better_candidate_is_admitted():
    verdict = judge(ACTIVE, BETTER, GateSettings())
    assert verdict["decision"] == "admitted" and verdict["failed"] == []
    assert {check["name"] for check in verdict["checks"]} == {
        "heldout_kl", "heldout_token_agreement", "golden_one_order", "golden_shifted", "golden_valid", "golden_ece"}


@pytest.mark.parametrize(("path", "value", "failed"), [
    (("heldout", "kl_to_teacher"), 0.097, "heldout_kl"),  # fell 3 %: less than the 5 % asked
    (("heldout", "token_agreement"), 0.94, "heldout_token_agreement"),
    (("golden", "by_slice", "one_order"), 0.97, "golden_one_order"),  # one slice worse by 2 points sinks it
    (("golden", "valid"), 0.99, "golden_valid"),
    (("golden", "ece"), 0.05, "golden_ece"),
])
def test_each_check_can_reject(path, value, failed):
    verdict = judge(ACTIVE, changed(path, value), GateSettings())
    assert verdict["decision"] == "rejected" and verdict["failed"] == [failed]


def test_no_held_out_examples_never_admits():
    empty = {"heldout": {"examples": 0}, "golden": BETTER["golden"]}
    verdict = judge({"heldout": {"examples": 0}, "golden": ACTIVE["golden"]}, empty, GateSettings())
    assert verdict["decision"] == "rejected" and verdict["failed"] == ["heldout_examples"]
