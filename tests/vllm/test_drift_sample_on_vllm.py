"""The uniform drift sample against real vLLM: a request drawn for the sample and escalated to the teacher has the
student's whole answer asked for off the request path, and scored by the teacher with `prompt_logprobs`, so
versions compare on traffic routing did not select (tests/gateway/shadow/test_drift_sample.py has the engine's
case)."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from router.policy_file import Calibration, PolicyFile, save_policy
from router.scorers import SignalScorer
from tests.conftest import ThreadedServer
from tests.gateway.shadow.test_worker import TICKET, metrics, spelled, wait_for
from tests.vllm.gateways import vllm_gateway_settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def ask(server, **headers) -> httpx.Response:
    reply = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=120, json={
        "model": "kdgate-demo", "messages": [{"role": "user", "content": TICKET}], "max_tokens": 64,
        "temperature": 0})
    reply.raise_for_status()
    return reply


def test_an_escalated_request_of_the_sample_is_measured_on_the_students_whole_answer(vllm_servers, tmp_path):
    policy = tmp_path / "policy.json"
    save_policy(PolicyFile(prefix_tokens=4, scorer=SignalScorer("min_prob"), threshold=2.0,  # escalates all
                           calibration=Calibration(data="test", examples=1, target_teacher_fraction=1.0,
                                                   realised_teacher_fraction=1.0)), policy)
    settings = vllm_gateway_settings(vllm_servers, tmp_path / "shadow.sqlite3",
                                     routing={"policy": "confidence", "policy_file": str(policy)},
                                     shadow={"record_escalations": False})
    with ThreadedServer(create_app(settings)) as server:
        served = ask(server)
        assert served.headers["x-kdgate-route"] == "teacher"
        store = server.app.state.chat.shadow.store
        record = wait_for(lambda: next(iter(store.iter_records()), None), timeout=120)
        student = ask(server, **{"x-kdgate-force": "student"}).json()["choices"][0]["message"]["content"]
        figures = metrics(server)
    assert record.kind == "escalation" and record.drift_sample  # stored although escalations are not recorded
    assert record.drift_answer == student  # vLLM's greedy answer from the student to the same request
    assert spelled(record.drift_tokens) == student and all(len(token["top"]) == 5 for token in record.drift_tokens)
    assert [token["token"] for token in record.teacher_scores] == \
        [token["token"] for token in record.drift_tokens][:len(record.teacher_scores)]
    assert record.aligned and record.mean_kl is not None and record.answers_agree is not None
    version = record.student_version
    assert figures[f"kdgate_drift_kl_count[('student_version', '{version}')]"] == 1
    assert figures[f"kdgate_drift_kl_sum[('student_version', '{version}')]"] == pytest.approx(record.mean_kl)
    assert figures.get("kdgate_shadow_kl_count[]", 0) == 0  # no student-served answer was shadowed
