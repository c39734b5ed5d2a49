"""Mid-stream handoff on the real demo engines: the student streams until a token collapses, the teacher
continues the same assistant message; the client sees one answer, and only tokens that passed the rule."""

from __future__ import annotations

import math

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import HandoffSettings, RoutingSettings
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.test_confidence_routing import TICKET

MIN_PROB = 0.9


@pytest.fixture(scope="module")
def handoff_gateway(demo_dirs, engine_server):
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=MIN_PROB))
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


@pytest.fixture
def client(handoff_gateway) -> OpenAI:
    return OpenAI(base_url=f"{handoff_gateway.url}/v1", api_key="unused", max_retries=0)


def student_tokens(client: OpenAI) -> list:
    completion = client.chat.completions.create(
        model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=64,
        logprobs=True, top_logprobs=1, extra_headers={"x-kdgate-force": "student"})
    return completion.choices[0].logprobs.content


def test_the_teacher_continues_from_the_last_sure_student_token(client, engine_server):
    tokens = student_tokens(client)
    cut = next(index for index, entry in enumerate(tokens) if entry.logprob < math.log(MIN_PROB))
    kept = "".join(entry.token for entry in tokens[:cut])
    continued = httpx.post(f"{engine_server.base_url}/chat/completions", timeout=60, json={
        "model": engine_server.model, "temperature": 0, "max_tokens": 64 - cut,
        "messages": [{"role": "user", "content": TICKET}, {"role": "assistant", "content": kept}],
        "add_generation_prompt": False, "continue_final_message": True}).json()

    stream = client.chat.completions.create(
        model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=64,
        stream=True, stream_options={"include_usage": True}, logprobs=True)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == kept + continued["choices"][0]["message"]["content"]
    streamed = [entry for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]
    assert all(entry.logprob >= math.log(MIN_PROB) for entry in streamed[:cut])  # no collapsed student token sent
    assert chunks[-1].usage.completion_tokens == cut + continued["usage"]["completion_tokens"]
    assert chunks[-1].model_extra["kdgate"] == {"route": "teacher", "reason": "handoff", "model": "demo-teacher",
                                                 "student_version": "initial", "handed_off_tokens": cut}
    assert chunks[0].choices[0].delta.role == "assistant"


def test_non_streaming_handoff_gives_the_same_answer(client):
    kwargs = dict(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=64)
    streamed = "".join(chunk.choices[0].delta.content or ""
                       for chunk in client.chat.completions.create(stream=True, **kwargs) if chunk.choices)
    whole = client.chat.completions.create(**kwargs)
    assert whole.choices[0].message.content == streamed
    assert whole.model_extra["kdgate"]["reason"] == "handoff"


def test_a_forced_student_is_never_handed_off(client):
    response = client.chat.completions.with_raw_response.create(
        model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=64,
        extra_headers={"x-kdgate-force": "student"})
    assert response.parse().model_extra["kdgate"]["reason"] == "forced:header"


def handoff_counts(url: str) -> tuple[float, float]:
    """`kdgate_handoffs_total` and `kdgate_route_decisions_total{reason="handoff",route="teacher"}` (0 if absent)."""
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
               for sample in family.samples}
    return (samples.get(("kdgate_handoffs_total", ()), 0.0),
            samples.get(("kdgate_route_decisions_total", (("reason", "handoff"), ("route", "teacher"))), 0.0))


def test_handoffs_are_counted(handoff_gateway, client):
    before = handoff_counts(handoff_gateway.url)  # the module's earlier tests handed off too
    completion = client.chat.completions.create(model="kdgate-demo", temperature=0, max_tokens=64,
                                                messages=[{"role": "user", "content": TICKET}])
    assert completion.model_extra["kdgate"]["reason"] == "handoff"
    after = handoff_counts(handoff_gateway.url)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
