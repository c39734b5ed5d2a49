"""`kdgate router calibrate` and `kdgate router eval` as a user runs them, and the gateway loading the result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.routing import build_policy
from gateway.settings import RoutingSettings
from router.handoff import HandoffRule, handoff_point
from router.records import RouteRecord, read_records, write_records
from router.signals import aggregate
from tests.conftest import ROOT
from tests.router.records_factory import synthetic_records


def kdgate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("scorer", ["logistic", "signal", "isotonic"])
def test_calibrate_writes_a_policy_the_gateway_loads(tmp_path, scorer):
    records = synthetic_records(400, seed=3)
    write_records(tmp_path / "records.jsonl", records)
    done = kdgate("router", "calibrate", "--data", str(tmp_path / "records.jsonl"), "--target-teacher-fraction",
                  "0.25", "--prefix-tokens", "full", "--scorer", scorer, "--out", str(tmp_path / "policy.json"))
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "policy.json").read_text())
    realised = saved["calibration"]["realised_teacher_fraction"]
    # exact up to ties; an isotonic fit makes plateaus of tied scores, kept together on the student's side
    assert 0.25 - (0.05 if scorer == "isotonic" else 1 / 400) <= realised <= 0.25 + 1 / 400
    policy = build_policy(RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json"))
    escalated = [policy.decide(None, aggregate(record.signals())).route == "teacher" for record in records]
    assert sum(escalated) / len(escalated) == pytest.approx(saved["calibration"]["realised_teacher_fraction"])


def test_calibrate_refuses_bad_input_clearly(tmp_path):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    done = kdgate("router", "calibrate", "--data", str(tmp_path / "bad.jsonl"), "--target-teacher-fraction", "0.2")
    assert done.returncode != 0 and "bad.jsonl:1 is not a routing record" in done.stderr
    write_records(tmp_path / "ok.jsonl", synthetic_records(50))
    done = kdgate("router", "calibrate", "--data", str(tmp_path / "ok.jsonl"), "--target-teacher-fraction", "0.2",
                  "--prefix-tokens", "zero")
    assert done.returncode == 2 and "whole number of tokens" in done.stderr


def check_handoff_rows(rows: list[dict], records: list[RouteRecord]) -> None:
    """Each handoff row against the held-out records it was measured on: which answers hand off is recomputed with
    the gateway's per-token rule; an answer that does not is judged as the student's recorded one, so the count of
    right answers lies between those the kept answers give and that plus the handed-off ones."""
    total_teacher_tokens = sum(record.teacher_completion_tokens for record in records)
    for row in rows:
        cuts = [handoff_point(record.student_sampled, HandoffRule(row["min_prob"])) for record in records]
        handed = sum(cut is not None for cut in cuts)
        kept_right = sum(bool(record.student_correct) for record, cut in zip(records, cuts, strict=True) if cut is None)
        assert row["handoff_share"] * len(records) == pytest.approx(handed), row
        right = row["accuracy"] * len(records)
        assert right == pytest.approx(round(right)), f"{right} right answers is not a count: {row}"
        assert kept_right <= round(right) <= kept_right + handed, row
        assert row["teacher_token_share"] == pytest.approx(row["teacher_tokens"] / total_teacher_tokens)
        assert (row["teacher_tokens"] > 0) == (handed > 0), row


@pytest.mark.slow
def test_router_eval_end_to_end_on_the_demo_models(tmp_path, demo_dirs):
    """Collect records from the real demo engines, compare policies, measure TTFT through real gateways."""
    done = kdgate("router", "eval", "--out", str(tmp_path), "--examples", "120", "--prefix", "4", "--prefix",
                  "full", "--scorer", "logistic", "--ttft-requests", "3", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {row["policy"]: row for row in report["policies"]}
    assert set(rows) == {"random", "oracle", "confidence N=4 logistic", "confidence N=full logistic"}
    assert rows["confidence N=full logistic"]["apgr"] > rows["random"]["apgr"]  # the demo student's errors show
    assert report["ttft"]["confidence N=full"]["requests"] == 3
    handoff = report["handoff"]
    assert [row["min_prob"] for row in handoff] == sorted(row["min_prob"] for row in handoff)
    shares = [row["teacher_token_share"] for row in handoff]
    assert shares == sorted(shares) and shares[-1] > 0  # a stricter rule hands off more
    check_handoff_rows(handoff, read_records(tmp_path / "records-test.jsonl"))
    # more of each answer goes to the ~99 %-right teacher
    assert handoff[-1]["accuracy"] >= handoff[0]["accuracy"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "policy-full.json").is_file() and "| random |" in (tmp_path / "tables.md").read_text()


def test_the_ttft_table_of_a_single_request_has_no_p90():
    """`kdgate router eval --ttft-requests 1` crashed formatting a p90 that one request does not have."""
    from kdgate.routing.report import ttft_table

    one = {"requests": 1, "ttft_p50_s": 0.012, "ttft_p90_s": None, "teacher_fraction": 0.0,
           "ttft_p50_escalated_s": None}
    table = ttft_table({"student_only": one})
    assert "| student_only | 12 ms | — | +0 ms | 0 % |  |" in table


def test_ttft_asks_the_gateway_for_the_model_its_config_serves():
    """With `--config`, TTFT asked every gateway for `kdgate-demo` whatever `served_model` said: a 404 from the
    study pair's gateway (`support-triage`), after the records and handoff had been measured."""
    from distill.demo import task
    from gateway.settings import RoutingSettings, load_settings
    from kdgate.routing.ttft import measure

    base = load_settings(None).model_copy(update={"served_model": "support-triage"})
    measured = measure({"student_only": RoutingSettings(policy="student_only")},
                       [task.take("test", 1, seed=7)[0].messages()], base)
    assert measured["student_only"]["requests"] == 1 and measured["student_only"]["teacher_fraction"] == 0
