"""Liveness, readiness, model list and the Prometheus exposition."""

from __future__ import annotations

import httpx
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


def test_metrics_parse_and_count_requests_by_route(gateway):
    httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
               json={"messages": [{"role": "user", "content": "My order 123 is late"}], "max_tokens": 3})
    text = httpx.get(f"{gateway.url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"kdgate_requests", "kdgate_time_to_first_token_seconds", "kdgate_e2e_request_latency_seconds",
            "kdgate_completion_tokens"} <= set(families)
    ok_student = [s for s in families["kdgate_requests"].samples if s.name == "kdgate_requests_total"
                  and s.labels["route"] == "student" and s.labels["outcome"] == "ok"]
    assert sum(s.value for s in ok_student) >= 1
    steps = [s.value for s in families["kdgate_engine_decode_steps"].samples if s.labels["backend"] == "student"]
    assert steps and steps[0] >= 1
