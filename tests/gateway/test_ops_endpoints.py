"""Liveness, readiness, model list and the Prometheus exposition."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def test_healthz(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_backend(gateway):
    response = httpx.get(f"{gateway.url}/readyz", timeout=20)
    assert response.status_code == 200
    backends = response.json()["backends"]
    assert backends["student"] == {"kind": "local", "model": "demo-student", "ready": True}
    assert backends["teacher"] == {"kind": "http", "model": "demo-teacher", "ready": True}


def test_models_lists_the_served_model(gateway):
    body = httpx.get(f"{gateway.url}/v1/models").json()
    assert body["object"] == "list" and [card["id"] for card in body["data"]] == ["kdgate-demo", "kdgate-demo@initial"]


def test_the_sdk_retrieves_each_listed_model_and_a_missing_one_is_a_404_naming_them(gateway):
    """`client.models.retrieve` was a 404 for a model the list has (no GET /v1/models/{id})."""
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    for card in client.models.list().data:
        assert client.models.retrieve(card.id) == card
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-9")
    assert "`kdgate-demo`" in missing.value.body["message"] and missing.value.body["param"] == "model"


def scrape(url: str) -> dict[tuple, float]:
    """Every sample of the exposition, by (name, sorted labels); it must parse."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


OK_STUDENT = ("kdgate_requests_total", (("outcome", "ok"), ("route", "student"), ("stream", "false")))
STEPS = ("kdgate_engine_decode_steps_total", (("backend", "student"),))
TOKENS = ("kdgate_engine_decoded_tokens_total", (("backend", "student"),))


def assert_one_request_counted(before: dict, after: dict, completion_tokens: int) -> None:
    """One non-streamed student answer of `completion_tokens` tokens, alone on the engine, moved the counters by
    exactly that: one ok request, and one decode step (of batch size 1) per token after the prefill's first."""
    assert after[OK_STUDENT] - before.get(OK_STUDENT, 0.0) == 1
    assert after[STEPS] - before[STEPS] == completion_tokens - 1
    assert after[TOKENS] - before[TOKENS] == completion_tokens - 1


def test_metrics_parse_and_count_requests_by_route(gateway):
    before = scrape(gateway.url)
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, headers={"x-kdgate-force": "student"},
                       json={"messages": [{"role": "user", "content": "My order 123 is late"}], "max_tokens": 3,
                             "ignore_eos": True})
    after = scrape(gateway.url)
    assert reply.status_code == 200, reply.text
    assert {"kdgate_requests_total", "kdgate_time_to_first_token_seconds_count",
            "kdgate_e2e_request_latency_seconds_count", "kdgate_completion_tokens_total"} <= {name for name, _ in after}
    assert reply.json()["usage"]["completion_tokens"] == 3  # max_tokens, the end token ignored
    assert_one_request_counted(before, after, 3)


def test_the_request_count_check_fails_when_no_request_came_between_the_scrapes(gateway):
    """The delta check can fail: two scrapes with nothing between them, or a request counted under another
    route, are caught."""
    quiet = scrape(gateway.url)
    with pytest.raises(AssertionError):
        assert_one_request_counted(quiet, quiet, 3)
    elsewhere = dict(quiet)
    teacher = ("kdgate_requests_total", (("outcome", "ok"), ("route", "teacher"), ("stream", "false")))
    elsewhere[teacher] = elsewhere.get(teacher, 0.0) + 1
    elsewhere[STEPS], elsewhere[TOKENS] = quiet[STEPS] + 2, quiet[TOKENS] + 2
    with pytest.raises(AssertionError):
        assert_one_request_counted(quiet, elsewhere, 3)
