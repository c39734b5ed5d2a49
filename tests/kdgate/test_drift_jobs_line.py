"""The drift run's last word on its jobs names the gate's failed checks with both models' figures: a run that ends
without a promotion says why where it ends (a CI run once said only "1 rejected")."""

from __future__ import annotations

from distill.online.gate import judge
from distill.online.settings import GateSettings
from kdgate.drift.run import jobs_line


def figures(kl: float, hits: list[bool], valid: float) -> dict:
    return {"heldout": {"examples": 10, "kl_to_teacher": kl, "token_agreement": 0.9},
            "golden": {"by_slice": {"two_orders": sum(hits) / len(hits)}, "hits": hits,
                       "slices": ["two_orders"] * len(hits), "valid": valid, "ece": 0.01}}


def job(job_id: int, state: str, gate: dict | None) -> dict:
    return {"id": job_id, "state": state, "trigger": "alert", "figures": {"gate": gate} if gate else None,
            "options": {"alert": {"labels": {"alertname": "KdgateTeacherShareHigh"}}}}


def test_a_rejected_job_names_each_failed_check_with_both_figures():
    active = figures(0.6, [True] * 16 + [False] * 9, 1.0)
    candidate = figures(0.07, [False] * 8 + [True] * 8 + [False] * 9, 0.99)
    gate = judge(active, candidate, GateSettings())
    assert gate["failed"] == ["golden_two_orders", "golden_valid"]

    line = jobs_line([job(2, "succeeded", None), job(1, "rejected", gate)])  # the trainer lists newest first

    first, second = line.removeprefix("re-distillation jobs: ").split("; 2 ")
    assert first.startswith("1 rejected (trigger alert: KdgateTeacherShareHigh; the gate failed ")
    assert "golden_two_orders 0.640 → 0.320 (needs ≥ 0.6300, or a drop with p ≥ 0.05 (8 tickets lost" in first
    assert "golden_valid 1.000 → 0.990 (needs ≥ 1.0000)" in first
    assert "heldout_kl" not in first  # a check that passed is not named
    assert second == "succeeded (trigger alert: KdgateTeacherShareHigh)"
    assert jobs_line([]) == "re-distillation jobs: none"
