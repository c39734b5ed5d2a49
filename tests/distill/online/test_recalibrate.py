"""The routing threshold refitted for a candidate: its signals are the ones the serving engine reports, and the
refitted threshold sends the target share of the held-out prompts to the teacher."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from distill.demo import drift
from distill.evaluate import load
from distill.online import recalibrate as recalibrate_module
from distill.online.dataset import Example
from distill.online.recalibrate import answer_windows, recalibrate
from router.handoff import HandoffRule, handoff_point
from router.policy_file import load_policy, policy_from_file
from router.signals import aggregate, signals_from_rows
from runtime.demo import ARTIFACTS_DIR, DEMO_TEACHER_DIR

POLICY = ARTIFACTS_DIR / "router-policy.json"  # fitted to the demo student, not the pre-launch one
PRELAUNCH = ARTIFACTS_DIR / "student-prelaunch"


def conversations(count: int, seed: int = 3) -> list[list[dict]]:
    usual = drift.take(drift.prelaunch("val", seed), count // 2)
    launched = drift.take(drift.launched("val", seed), count - count // 2)
    return [ticket.messages() for ticket in [*usual, *launched]]


def test_the_windows_are_the_ones_the_engine_serves(engine_server):
    """The teacher's local model here and the teacher behind `kdgate engine`: the same greedy tokens, the same
    top-5 logprobs, so the same window signals (to float tolerance)."""
    prompts = conversations(6)
    model, tokenizer = load(DEMO_TEACHER_DIR)
    local = answer_windows(model, tokenizer, prompts, top_logprobs=5, prefix_tokens=8, max_new_tokens=96)
    for messages, window in zip(prompts, local, strict=True):
        reply = httpx.post(f"{engine_server.base_url}/chat/completions", timeout=60, json={
            "model": engine_server.model, "messages": messages, "temperature": 0, "max_tokens": 96,
            "logprobs": True, "top_logprobs": 5}).json()
        tokens = reply["choices"][0]["logprobs"]["content"][:8]
        served = aggregate(signals_from_rows([[top["logprob"] for top in token["top_logprobs"]] for token in tokens],
                                             [token["logprob"] for token in tokens]))
        assert window.tokens == served.tokens
        assert window.mean_logprob == pytest.approx(served.mean_logprob, abs=1e-3)
        assert window.mean_margin == pytest.approx(served.mean_margin, abs=1e-2)


def spy(monkeypatch, name: str) -> list:
    """What `distill.online.recalibrate.<name>` was called with and returned, the function left as it is."""
    calls = []
    original = getattr(recalibrate_module, name)

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(recalibrate_module, name, recorded)
    return calls


def test_the_refitted_threshold_meets_the_target_on_the_held_out_prompts(tmp_path, monkeypatch):
    heldout = [Example(f"r{index}", datetime.now(UTC), "off", messages, np.zeros(1, np.int32),
                       np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32), "")
               for index, messages in enumerate(conversations(40))]
    answered = spy(monkeypatch, "answer_windows")
    figures = recalibrate(PRELAUNCH, POLICY, heldout, tmp_path / "policy.json")

    refitted, original = load_policy(tmp_path / "policy.json"), load_policy(POLICY)
    target = original.calibration.target_teacher_fraction
    assert refitted.scorer == original.scorer and refitted.prefix_tokens == original.prefix_tokens
    assert refitted.threshold == figures["threshold"] and figures["threshold_before"] == original.threshold
    assert abs(figures["realised_teacher_fraction"] - target) <= 1 / figures["examples"]
    assert refitted.calibration.examples == figures["examples"] >= 38
    # The share recomputed: the refitted file's policy, as the gateway builds it, decides on each answer's window.
    ((_, windows),) = answered
    with_tokens = [window for window in windows if window.tokens]
    served = policy_from_file(refitted)
    escalated = sum(served.decide(None, window).route == "teacher" for window in with_tokens)
    assert len(with_tokens) == figures["examples"]
    assert abs(escalated / len(with_tokens) - target) <= 1 / len(with_tokens)
    assert escalated / len(with_tokens) == pytest.approx(figures["realised_teacher_fraction"])
    # half of these prompts are launched products the pre-launch student never saw: the old threshold sends more
    assert figures["teacher_fraction_with_old_threshold"] > target + 0.1


def test_the_refitted_handoff_floor_meets_the_target_share_of_traffic(monkeypatch):
    """Escalations are all recorded, student answers only sampled (here 1 in 4): the floor is fitted to the
    traffic they stand for, not to the records."""
    from distill.online.recalibrate import recalibrate_handoff
    from runtime.store.records import ShadowRecord

    def record(index: int, messages: list[dict], escalated: bool) -> ShadowRecord:
        return ShadowRecord(f"r{index}", datetime.now(UTC), "escalation" if escalated else "shadow", "s", "t",
                            "teacher" if escalated else "student", "handoff" if escalated else "policy", messages,
                            "", [], sample_rate=1.0 if escalated else 0.25)

    records = [record(index, messages, escalated=index % 2 == 1)  # the launched half: escalated
               for index, messages in enumerate(conversations(40, seed=5))]
    answers = spy(monkeypatch, "token_signals")
    for target in (0.2, 0.5):
        answers.clear()
        figures = recalibrate_handoff(PRELAUNCH, records, target)
        assert 0 < figures["min_prob"] < 1 and figures["examples"] >= 38
        assert abs(figures["realised_teacher_fraction"] - target) <= 0.05
        # Recomputed from each answer's token logprobs: the gateway's per-token rule, each record standing for
        # 1 / sample_rate requests.
        rule = HandoffRule(figures["min_prob"])
        handed = total = 0.0
        for record, ((_, sampled), _) in zip(records, answers, strict=True):
            if len(sampled):
                total += 1 / record.sample_rate
                handed += (handoff_point(sampled.tolist(), rule) is not None) / record.sample_rate
        assert sum(len(sampled) > 0 for (_, sampled), _ in answers) == figures["examples"]
        assert abs(handed / total - target) <= 0.05
        assert handed / total == pytest.approx(figures["realised_teacher_fraction"])
    assert figures["weights"] == {"escalation": 20, "shadow": 20}
