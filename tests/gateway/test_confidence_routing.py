"""Confidence routing through the gateway, on the real demo engines: hold back, decide, release or escalate.

The policy object is the gateway's own; tests move its threshold to force each outcome (below every score: the
student is kept; above every score: every request escalates) and compare with the forced routes' answers.
"""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import BackendSettings, GatewaySettings, RoutingSettings, ShadowSettings
from router.policy_file import Calibration, PolicyFile, save_policy
from router.scorers import SignalScorer
from tests.conftest import ThreadedServer, free_port, gateway_settings

# A held-out ticket the demo student gets wrong (it copies the other order's number) and the teacher gets right.
TICKET = ("Dear team, Order 35533 was a Plse Camera and order 24315 was a PhotoFrge. The Plse Camera makes a grinding "
          "noise. Last year order 11918 had the same problem. I have a Basic account. Thanks, James")
KEEP, ESCALATE = -1.0, 2.0  # min_prob lies in [0, 1]


def write_policy(path, prefix_tokens: int | None) -> None:
    save_policy(PolicyFile(prefix_tokens=prefix_tokens, top_logprobs=5, scorer=SignalScorer("min_prob"),
                           threshold=0.5, calibration=Calibration(data="test", examples=1,
                                                                  target_teacher_fraction=0.2,
                                                                  realised_teacher_fraction=0.2)), path)


@pytest.fixture(scope="module")
def routed(demo_dirs, engine_server, tmp_path_factory):
    from gateway.app import create_app

    path = tmp_path_factory.mktemp("policy") / "policy.json"
    write_policy(path, prefix_tokens=4)
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=path))
    with ThreadedServer(create_app(settings)) as server:
        yield server


@pytest.fixture
def policy(routed):
    policy = routed.app.state.chat.students.slot.active.policy
    saved = policy.threshold
    yield policy
    policy.threshold = saved


@pytest.fixture
def client(routed) -> OpenAI:
    return OpenAI(base_url=f"{routed.url}/v1", api_key="unused", max_retries=0)


def ask(client: OpenAI, stream: bool = False, force: str | None = None, **kwargs):
    response = client.chat.completions.with_raw_response.create(
        model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=64,
        stream=stream, extra_headers={"x-kdgate-force": force} if force else None, **kwargs)
    return response.headers, response.parse()


def streamed(client: OpenAI, **kwargs):
    headers, stream = ask(client, stream=True, stream_options={"include_usage": True}, **kwargs)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return headers, chunks, text


def test_confident_student_is_released_in_order_without_duplicates(client, policy):
    policy.threshold = KEEP
    _, direct = ask(client, force="student")
    headers, chunks, text = streamed(client, logprobs=True, top_logprobs=2)
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("student", "confidence:high")
    assert text == direct.choices[0].message.content
    tokens = [entry for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
              for entry in chunk.choices[0].logprobs.content]
    assert "".join(entry.token for entry in tokens).startswith(text)
    assert len(tokens) == chunks[-1].usage.completion_tokens  # each held-back token sent exactly once
    assert all(len(entry.top_logprobs) == 2 for entry in tokens)  # the client's k, not the router's 5
    assert chunks[-1].model_extra["kdgate"] == {"route": "student", "reason": "confidence:high",
                                                "model": "demo-student", "student_version": "initial"}


def test_escalated_stream_contains_only_the_teacher(client, policy):
    policy.threshold = ESCALATE
    _, student = ask(client, force="student")
    _, teacher = ask(client, force="teacher")
    assert student.choices[0].message.content != teacher.choices[0].message.content  # the test can tell them apart
    headers, chunks, text = streamed(client)
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("teacher", "confidence:low")
    assert text == teacher.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == teacher.usage.completion_tokens  # usage: what the client got


@pytest.mark.parametrize("threshold, route", [(KEEP, "student"), (ESCALATE, "teacher")])
def test_non_streaming_requests_route_the_same_way(client, policy, threshold, route):
    policy.threshold = threshold
    headers, completion = ask(client)
    _, direct = ask(client, force=route)
    assert headers["x-kdgate-route"] == route == completion.model_extra["kdgate"]["route"]
    assert completion.choices[0].message.content == direct.choices[0].message.content
    assert completion.usage == direct.usage
    assert completion.choices[0].logprobs is None  # the router's logprobs are not the client's


def test_forced_route_skips_the_hold_back(client, policy):
    policy.threshold = ESCALATE
    headers, _ = ask(client, force="student")
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("student", "forced:header")


def test_routing_metrics(routed, client, policy):
    policy.threshold = ESCALATE
    ask(client)
    metrics = {sample.name + str(sorted(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(httpx.get(f"{routed.url}/metrics").text)
               for sample in family.samples}
    assert metrics["kdgate_route_decisions_total[('reason', 'confidence:low'), ('route', 'teacher')]"] >= 1
    assert metrics["kdgate_escalated_student_tokens_total[]"] >= 4
    assert metrics["kdgate_routing_threshold[]"] == ESCALATE
    assert metrics["kdgate_teacher_fraction_target[]"] == 0.2
    assert metrics["kdgate_confidence_score_count[]"] >= 1
    assert metrics["kdgate_hold_back_seconds_count[]"] >= 1


def test_whole_answer_hold_back_replays_the_finished_answer(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    write_policy(tmp_path / "full.json", prefix_tokens=None)
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "full.json"))
    with ThreadedServer(create_app(settings)) as server:
        server.app.state.chat.students.slot.active.policy.threshold = KEEP
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        _, direct = ask(client, force="student")
        headers, chunks, text = streamed(client)
    assert headers["x-kdgate-route"] == "student"
    assert text == direct.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == \
        direct.choices[0].finish_reason


def test_a_student_that_fails_during_hold_back_escalates(engine_server, tmp_path):
    from gateway.app import create_app

    write_policy(tmp_path / "policy.json", prefix_tokens=4)
    settings = GatewaySettings(
        student=BackendSettings(kind="http", base_url=f"http://127.0.0.1:{free_port()}/v1", model="gone"),
        teacher=BackendSettings(kind="http", base_url=engine_server.base_url, model=engine_server.model),
        routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json"),
        shadow=ShadowSettings(enabled=False))
    with ThreadedServer(create_app(settings)) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        headers, chunks, text = streamed(client)
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("teacher", "student_error")
    assert text and chunks[-1].usage.completion_tokens >= 1
