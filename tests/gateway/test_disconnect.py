"""A client that goes away mid-stream cancels the work upstream: the local engine and an HTTP backend's server."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"


def read_two_chunks_and_leave(url: str, headers: dict | None = None) -> None:
    body = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # Leaving the `with` block closes the connection before the stream is done.


def cancelled_count(url: str, route: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(sample.value for family in families if family.name == "kdgate_requests" for sample in family.samples
               if sample.name == "kdgate_requests_total" and sample.labels["route"] == route
               and sample.labels["outcome"] == "cancelled")


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_cancels_local_engine_work(gateway):
    engine = gateway.app.state.chat.backends["student"].engine
    before = cancelled_count(gateway.url, "student")
    read_two_chunks_and_leave(gateway.url)
    assert wait_for(lambda: engine.stats()["running"] == 0), "the student engine kept decoding after the client left"
    assert wait_for(lambda: cancelled_count(gateway.url, "student") == before + 1)


def test_disconnect_cancels_the_http_backends_request(gateway, engine_server):
    upstream = engine_server.base_url.removesuffix("/v1")
    before = cancelled_count(upstream, "engine")
    read_two_chunks_and_leave(gateway.url, headers={"x-kdgate-force": "teacher"})
    assert wait_for(lambda: cancelled_count(upstream, "engine") == before + 1), \
        "the teacher's server did not see the request cancelled"


def test_non_streaming_client_timeout_cancels_the_work(gateway):
    engine = gateway.app.state.chat.backends["student"].engine
    before = cancelled_count(gateway.url, "student")
    body = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 450, "ignore_eos": True}
    # 450 tokens take the student ~0.3 s on 2 cores; the client gives up long before and closes the connection.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.03))
    assert wait_for(lambda: cancelled_count(gateway.url, "student") == before + 1)
    assert wait_for(lambda: engine.stats()["running"] == 0)
