"""The uniform drift sample: requests drawn before routing are measured on the student's whole answer whatever
route they took. An escalated one has that answer asked for by the shadow worker, off the request path (the student
call is charged to the shadow route), from the version that started it; it lands in the drift metrics and in a record
marked as the sample's. The student-served and unsampled cases are in test_worker.py."""

from __future__ import annotations

import httpx
import pytest

from gateway.settings import RoutingSettings
from gateway.students.slot import ServedStudent, StudentSlot
from router.confidence import ConfidencePolicy
from router.policy_file import Calibration, PolicyFile, save_policy
from router.scorers import SignalScorer
from runtime.settings import CostSettings
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.shadow.test_worker import TICKET, metrics, shadow_settings, spelled, wait_for

PRICE = CostSettings(prompt_per_million=1.0, completion_per_million=3.0)


def ask(server, **headers) -> httpx.Response:
    reply = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=60, json={
        "messages": [{"role": "user", "content": TICKET}], "max_tokens": 64, "temperature": 0})
    reply.raise_for_status()
    return reply


def test_an_escalated_request_of_the_sample_is_measured_on_the_students_whole_answer(demo_dirs, engine_server,
                                                                                     tmp_path):
    from gateway.app import create_app

    save_policy(PolicyFile(prefix_tokens=4, scorer=SignalScorer("min_prob"), threshold=2.0,  # escalates all
                           calibration=Calibration(data="test", examples=1, target_teacher_fraction=1.0,
                                                   realised_teacher_fraction=1.0)), tmp_path / "policy.json")
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json"),
                                shadow=shadow_settings(tmp_path, record_escalations=False))
    settings = settings.model_copy(update={"student": settings.student.model_copy(update={"cost": PRICE}),
                                           "teacher": settings.teacher.model_copy(update={"cost": PRICE})})
    with ThreadedServer(create_app(settings)) as server:
        served = ask(server)
        assert served.headers["x-kdgate-route"] == "teacher"
        store = server.app.state.chat.shadow.store
        record = wait_for(lambda: next(iter(store.iter_records()), None))
        student = ask(server, **{"x-kdgate-force": "student"}).json()["choices"][0]["message"]["content"]
        figures = metrics(server)
    assert record.kind == "escalation" and record.drift_sample  # stored although escalations are not recorded
    assert record.sample_rate == 1.0 and len(record.student_tokens) == 4  # the held-back tokens, as always
    assert record.drift_answer == student  # the student's whole answer to the same request (greedy, as asked)
    assert spelled(record.drift_tokens) == student and all(len(token["top"]) == 5 for token in record.drift_tokens)
    assert [token["token"] for token in record.teacher_scores] == [token["token"] for token in record.drift_tokens
                                                                    ][:len(record.teacher_scores)]
    assert record.aligned and record.mean_kl is not None and record.answers_agree is not None
    drift_kl = "kdgate_drift_kl_count[('student_version', 'initial')]"
    assert figures[drift_kl] == 1 and figures["kdgate_drift_kl_sum[('student_version', 'initial')]"] == \
        pytest.approx(record.mean_kl)
    assert figures.get("kdgate_shadow_kl_count[]", 0) == 0  # no student-served answer was shadowed
    assert figures["kdgate_cost_dollars_total[('backend', 'student'), ('route', 'shadow')]"] > 0  # the worker asked


class Named:
    def __init__(self, name: str):
        self.name = name


def test_only_a_version_that_still_serves_is_held_for_off_path_work():
    """A drift escalation is answered by the version that started it, never by the one that replaced it."""
    old = ServedStudent("v1", Named("v1"), ConfidencePolicy.__new__(ConfidencePolicy))
    new = ServedStudent("v2", Named("v2"), old.policy)
    slot = StudentSlot(old)
    with slot.held("v1") as backend:
        assert backend.name == "v1" and old.leases == 1
    assert old.leases == 0
    slot.active = new  # promoted (`switch` would also retire v1)
    with slot.held("v1") as backend:
        assert backend is None
    with slot.held(None) as backend:
        assert backend.name == "v2"
