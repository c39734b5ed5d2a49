"""Backend faults the gateway serves around, against real `kdgate engine` servers killed or paused:

- teacher down, failing or past its first-token deadline: a request the student already answered is served from
  the student (reason `teacher_unavailable`), for a whole-answer escalation and for a mid-stream handoff;
- student down: the teacher serves (reason `student_error`), and the student's failure is counted;
- a 4xx from a backend is the client's error: returned as such, never escalated to the other backend;
- a forced teacher request with the teacher down fails cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import BackendSettings, GatewaySettings, HandoffSettings, RoutingSettings, ShadowSettings
from tests.conftest import ThreadedServer, start_engine_server, stop
from tests.gateway.test_confidence_routing import ESCALATE, write_policy

# The README's hard ticket: the student copies the wrong order number, and hands off at p=0.9.
HARD = ("Hi there, Felix here. Order 28898 was a StreamPlus and order 72108 was a TaskPilto. The TaskPilto says my "
        "account is disabled. Last year order 36966 had the same problem. I am a Plus member.")
# First-token deadlines: generous for a live engine (a healthy first token can take seconds on a loaded 2-core CI
# box, and a missed deadline would turn the route under test into `teacher_unavailable`); short only for the
# paused teacher, whose deadline is the thing under test.
LIVE_DEADLINE_S, PAUSED_DEADLINE_S = 30.0, 1.5
pytestmark = pytest.mark.slow  # each test starts its own engine servers


@pytest.fixture(scope="module")
def student_engine(demo_dirs):
    engine = start_engine_server(demo_dirs[0], "demo-student")
    yield engine
    stop(engine.process)


@pytest.fixture
def teacher_engine(demo_dirs):
    """A teacher of the test's own: tests kill it or pause it."""
    engine = start_engine_server(demo_dirs[1], "demo-teacher")
    yield engine
    os.kill(engine.process.pid, signal.SIGCONT) if engine.process.poll() is None else None
    stop(engine.process)


def gateway(student, teacher, routing: RoutingSettings, teacher_deadline_s: float = LIVE_DEADLINE_S
            ) -> ThreadedServer:
    def backend(engine, deadline_s):
        return BackendSettings(kind="http", base_url=engine.base_url, model=engine.model,
                               first_token_timeout_s=deadline_s)
    settings = GatewaySettings(student=backend(student, LIVE_DEADLINE_S), teacher=backend(teacher, teacher_deadline_s),
                               routing=routing, shadow=ShadowSettings(enabled=False))
    return ThreadedServer(create_app(settings))


def escalate_everything(tmp_path) -> RoutingSettings:
    """The whole-answer cascade from a policy file whose threshold is above every score: every answer is judged
    unsure."""
    path = tmp_path / "policy.json"
    write_policy(path, prefix_tokens=None, threshold=ESCALATE)
    return RoutingSettings(policy="confidence", policy_file=path, handoff=HandoffSettings(enabled=False))


def handoff_at(min_prob: float) -> RoutingSettings:
    return RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=min_prob))


def ask(server: ThreadedServer, text: str = HARD, stream: bool = False, force: str | None = None, **extra):
    body = {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 64, "stream": stream}
    headers = {"x-kdgate-force": force} if force else {}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body | extra, headers=headers, timeout=60)


def sse_events(response: httpx.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def streamed_text(events: list[dict]) -> str:
    return "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))


def metric(server: ThreadedServer, name: str, **labels) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def student_alone(server: ThreadedServer) -> str:
    return ask(server, force="student").json()["choices"][0]["message"]["content"]


def test_teacher_down_an_escalated_answer_is_served_from_the_student(student_engine, teacher_engine, tmp_path):
    with gateway(student_engine, teacher_engine, escalate_everything(tmp_path)) as server:
        expected = student_alone(server)
        teacher_engine.process.kill()
        teacher_engine.process.wait()
        reply = ask(server)
        assert reply.status_code == 200, reply.text
        assert (reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]) == \
            ("student", "teacher_unavailable")
        assert reply.json()["kdgate"]["reason"] == "teacher_unavailable"
        assert reply.json()["choices"][0]["message"]["content"] == expected
        streamed = ask(server, stream=True)
        events = sse_events(streamed)
        assert streamed_text(events) == expected and not any("error" in event for event in events)
        assert events[-1]["kdgate"]["reason"] == "teacher_unavailable"
        assert metric(server, "kdgate_fallbacks_total", reason="teacher_unavailable") == 2
        assert metric(server, "kdgate_errors_total", backend="teacher", error="UpstreamUnavailable") == 2


def test_a_teacher_past_its_first_token_deadline_is_not_waited_for(student_engine, teacher_engine, tmp_path):
    with gateway(student_engine, teacher_engine, escalate_everything(tmp_path),
                 teacher_deadline_s=PAUSED_DEADLINE_S) as server:
        expected = student_alone(server)
        os.kill(teacher_engine.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        reply = ask(server)
        waited = time.monotonic() - started
        assert reply.status_code == 200 and reply.headers["x-kdgate-route-reason"] == "teacher_unavailable"
        assert reply.json()["choices"][0]["message"]["content"] == expected
        assert waited < PAUSED_DEADLINE_S + 10, waited  # bounded by the deadline, not by the 120 s read timeout
        assert metric(server, "kdgate_errors_total", backend="teacher", error="UpstreamTimeout") == 1


def test_teacher_down_a_handoff_finishes_with_the_student(student_engine, teacher_engine):
    with gateway(student_engine, teacher_engine, handoff_at(0.9)) as server:
        expected = student_alone(server)
        assert ask(server).json()["kdgate"]["reason"] == "handoff"  # with the teacher up, this ticket hands off
        teacher_engine.process.kill()
        teacher_engine.process.wait()
        for stream in (False, True):
            reply = ask(server, stream=stream)
            assert reply.status_code == 200, reply.text
            if stream:
                events = sse_events(reply)
                text, info = streamed_text(events), events[-1]["kdgate"]
            else:
                text, info = reply.json()["choices"][0]["message"]["content"], reply.json()["kdgate"]
            assert text == expected
            assert (info["route"], info["reason"]) == ("student", "teacher_unavailable")
        assert metric(server, "kdgate_fallbacks_total", reason="teacher_unavailable") == 2
        assert metric(server, "kdgate_handoffs_total") == 1  # only the one that reached the teacher


def test_student_down_the_teacher_serves_and_the_failure_is_counted(demo_dirs, teacher_engine, tmp_path):
    student = start_engine_server(demo_dirs[0], "demo-student")
    try:
        for routing in (handoff_at(0.9), escalate_everything(tmp_path)):
            with gateway(student, teacher_engine, routing) as server:
                expected = ask(server, force="teacher").json()["choices"][0]["message"]["content"]
                student.process.kill()
                student.process.wait()
                reply = ask(server)
                assert reply.status_code == 200, reply.text
                assert (reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]) == \
                    ("teacher", "student_error")
                assert reply.json()["choices"][0]["message"]["content"] == expected
                assert metric(server, "kdgate_errors_total", backend="student", error="UpstreamUnavailable") == 1
                assert metric(server, "kdgate_fallbacks_total", reason="student_error") == 1
            student = start_engine_server(demo_dirs[0], "demo-student")
    finally:
        stop(student.process)


@pytest.mark.parametrize("routing_name", ["handoff", "cascade"])
def test_a_client_error_from_the_student_is_returned_not_escalated(student_engine, teacher_engine, tmp_path,
                                                                   routing_name):
    routing = handoff_at(0.9) if routing_name == "handoff" else escalate_everything(tmp_path)
    with gateway(student_engine, teacher_engine, routing) as server:
        too_long = "order 12345 " * 200  # past the demo models' 512-token context
        reply = ask(server, text=too_long)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert "context length" in error["message"] and "student" in error["message"]
        assert metric(server, "kdgate_route_decisions_total", route="teacher", reason="student_error") == 0
        assert metric(server, "kdgate_errors_total", backend="teacher", error="UpstreamRejected") == 0


def test_a_forced_teacher_request_fails_cleanly_when_the_teacher_is_down(student_engine, teacher_engine):
    with gateway(student_engine, teacher_engine, handoff_at(0.9)) as server:
        teacher_engine.process.kill()
        teacher_engine.process.wait()
        reply = ask(server, force="teacher")
        assert reply.status_code == 503 and "teacher" in reply.json()["error"]["message"]
