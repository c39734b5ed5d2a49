"""Confidence routing through the gateway, on the real demo engines: hold back, decide, release or escalate.

Each gateway starts from a policy file, as a user's does (`kdgate router calibrate` writes it, `routing.policy_file`
loads it), whose threshold forces the outcome: below every score the student is kept, above every score every
request escalates. The answers are compared with the forced routes' answers.
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
ROUTE_AT = {KEEP: ("student", "confidence:high"), ESCALATE: ("teacher", "confidence:low")}
PREFIX_TOKENS = 4


def write_policy(path, prefix_tokens: int | None, threshold: float) -> None:
    """A policy file as `kdgate router calibrate` writes it, scoring by the lowest token probability."""
    save_policy(PolicyFile(prefix_tokens=prefix_tokens, top_logprobs=5, scorer=SignalScorer("min_prob"),
                           threshold=threshold, calibration=Calibration(data="test", examples=1,
                                                                        target_teacher_fraction=0.2,
                                                                        realised_teacher_fraction=0.2)), path)


def start_routed(demo_dirs, engine_server, path) -> ThreadedServer:
    from gateway.app import create_app

    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=path))
    return ThreadedServer(create_app(settings))


def routed_by(threshold: float, demo_dirs, engine_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    write_policy(path, prefix_tokens=PREFIX_TOKENS, threshold=threshold)
    with start_routed(demo_dirs, engine_server, path) as server:
        yield server


@pytest.fixture(scope="module")
def keeping_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(KEEP, demo_dirs, engine_server, tmp_path_factory)


@pytest.fixture(scope="module")
def escalating_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(ESCALATE, demo_dirs, engine_server, tmp_path_factory)


@pytest.fixture
def routed(request) -> ThreadedServer:
    """The gateway started from a policy file holding the threshold `request.param` (KEEP or ESCALATE)."""
    return request.getfixturevalue({KEEP: "keeping_gateway", ESCALATE: "escalating_gateway"}[request.param])


keeping = pytest.mark.parametrize("routed", [KEEP], indirect=True, ids=["keep"])
escalating = pytest.mark.parametrize("routed", [ESCALATE], indirect=True, ids=["escalate"])


@pytest.fixture
def client(routed) -> OpenAI:
    return client_of(routed)


def client_of(server: ThreadedServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def scrape(url: str) -> dict[str, float]:
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
            for sample in family.samples}


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


@keeping
def test_confident_student_is_released_in_order_without_duplicates(client):
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
                                                "model": "demo-student", "student_version": "initial", "handed_off_tokens": None}


@escalating
def test_escalated_stream_contains_only_the_teacher(client):
    _, student = ask(client, force="student")
    _, teacher = ask(client, force="teacher")
    assert student.choices[0].message.content != teacher.choices[0].message.content  # the test can tell them apart
    headers, chunks, text = streamed(client)
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("teacher", "confidence:low")
    assert text == teacher.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == teacher.usage.completion_tokens  # usage: what the client got


@pytest.mark.parametrize("routed, route", [(KEEP, "student"), (ESCALATE, "teacher")], indirect=["routed"],
                         ids=["keep", "escalate"])
def test_non_streaming_requests_route_the_same_way(client, route):
    headers, completion = ask(client)
    _, direct = ask(client, force=route)
    assert headers["x-kdgate-route"] == route == completion.model_extra["kdgate"]["route"]
    assert completion.choices[0].message.content == direct.choices[0].message.content
    assert completion.usage == direct.usage
    assert completion.choices[0].logprobs is None  # the router's logprobs are not the client's


@escalating
def test_forced_route_skips_the_hold_back(client):
    headers, _ = ask(client, force="student")
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ("student", "forced:header")


# ------------------------------------------------------------------------------------------- the file's threshold


def assert_routes_by_the_files_threshold(server: ThreadedServer, threshold: float) -> None:
    """The gateway judges with the threshold its policy file holds: the route follows it, and the gauge shows it."""
    headers, _ = ask(client_of(server))
    assert (headers["x-kdgate-route"], headers["x-kdgate-route-reason"]) == ROUTE_AT[threshold]
    assert scrape(server.url)["kdgate_routing_threshold[]"] == threshold


@pytest.mark.parametrize("routed, threshold", [(KEEP, KEEP), (ESCALATE, ESCALATE)], indirect=["routed"],
                         ids=["keep", "escalate"])
def test_the_gateway_routes_by_the_threshold_in_its_policy_file(routed, threshold):
    assert_routes_by_the_files_threshold(routed, threshold)


def test_a_gateway_that_ignores_its_files_threshold_fails_the_routing_check(demo_dirs, engine_server, tmp_path,
                                                                            monkeypatch):
    """Mutation check: a gateway whose policy loaders replace the file's threshold (here by 0.5) fails the check."""
    import gateway.routing
    import gateway.students.loader
    from router.policy_file import load_policy

    for module in (gateway.routing, gateway.students.loader):  # the configured policy; a student version's own
        monkeypatch.setattr(module, "load_policy", lambda path: load_policy(path).model_copy(update={"threshold": 0.5}))
    write_policy(tmp_path / "policy.json", prefix_tokens=PREFIX_TOKENS, threshold=ESCALATE)
    with start_routed(demo_dirs, engine_server, tmp_path / "policy.json") as server:
        with pytest.raises(AssertionError):
            assert_routes_by_the_files_threshold(server, ESCALATE)


# ------------------------------------------------------------------------------------------- metrics


def assert_one_escalation_counted(before: dict[str, float], after: dict[str, float]) -> None:
    """Between the two scrapes, exactly one request was held back for its prefix, scored and escalated."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("kdgate_route_decisions_total[('reason', 'confidence:low'), ('route', 'teacher')]") == 1
    assert delta("kdgate_escalated_student_tokens_total[]") == PREFIX_TOKENS  # the held-back tokens discarded
    assert delta("kdgate_confidence_score_count[]") == 1
    assert delta("kdgate_hold_back_seconds_count[]") == 1


@escalating
def test_routing_metrics(routed, client):
    before = scrape(routed.url)
    ask(client)
    after = scrape(routed.url)
    assert_one_escalation_counted(before, after)
    assert after["kdgate_routing_threshold[]"] == ESCALATE  # the policy file's
    assert after["kdgate_teacher_fraction_target[]"] == 0.2


@escalating
def test_the_counter_check_fails_when_no_request_was_made(routed, client):
    """Mutation check: the counters of earlier tests are not mistaken for this request's."""
    ask(client)  # counters already non-zero, as the earlier tests leave them
    before = scrape(routed.url)
    with pytest.raises(AssertionError):
        assert_one_escalation_counted(before, scrape(routed.url))


def test_whole_answer_hold_back_replays_the_finished_answer(demo_dirs, engine_server, tmp_path):
    write_policy(tmp_path / "full.json", prefix_tokens=None, threshold=KEEP)
    with start_routed(demo_dirs, engine_server, tmp_path / "full.json") as server:
        client = client_of(server)
        _, direct = ask(client, force="student")
        headers, chunks, text = streamed(client)
    assert headers["x-kdgate-route"] == "student"
    assert text == direct.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == \
        direct.choices[0].finish_reason


def test_a_student_that_fails_during_hold_back_escalates(engine_server, tmp_path):
    from gateway.app import create_app

    write_policy(tmp_path / "policy.json", prefix_tokens=PREFIX_TOKENS, threshold=KEEP)  # it would keep the student
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

