"""A client that goes away mid-stream cancels the work upstream: the local engine and an HTTP backend's server."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.fallback import with_deadline
from runtime.contract import Delta

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
    """Cancelled requests by the route that finished them; `gateway` counts both of the gateway's routes: under the
    session gateway's handoff routing a student answer that reaches an unsure token before the cancellation lands is
    counted under `teacher` (the test failed that way once, on a loaded box)."""
    routes = ("student", "teacher") if route == "gateway" else (route,)
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(sample.value for family in families if family.name == "kdgate_requests" for sample in family.samples
               if sample.name == "kdgate_requests_total" and sample.labels["route"] in routes
               and sample.labels["outcome"] == "cancelled")


def wait_for(condition, timeout: float = 30.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def test_disconnect_cancels_local_engine_work(gateway):
    engine = gateway.app.state.chat.backends["student"].engine
    before = cancelled_count(gateway.url, "gateway")
    read_two_chunks_and_leave(gateway.url)
    assert wait_for(lambda: engine.stats()["running"] == 0), "the student engine kept decoding after the client left"
    assert wait_for(lambda: cancelled_count(gateway.url, "gateway") == before + 1)


def test_disconnect_cancels_the_http_backends_request(gateway, engine_server):
    upstream = engine_server.base_url.removesuffix("/v1")
    before = cancelled_count(upstream, "engine")
    read_two_chunks_and_leave(gateway.url, headers={"x-kdgate-force": "teacher"})
    assert wait_for(lambda: cancelled_count(upstream, "engine") == before + 1), \
        "the teacher's server did not see the request cancelled"


def test_non_streaming_client_timeout_cancels_the_work(gateway):
    """A client that gives up on a non-streamed answer while the student is decoding it: the connection closes
    (as a client's read timeout closes it) only once the request is seen running in the engine, not after a fixed
    30 ms that a loaded box may spend before the request is even admitted."""
    engine = gateway.app.state.chat.backends["student"].engine
    assert wait_for(lambda: engine.stats()["running"] == 0)
    before, steps_before = cancelled_count(gateway.url, "gateway"), engine.stats()["steps"]
    body = json.dumps({"messages": [{"role": "user", "content": TICKET}], "max_tokens": 450, "ignore_eos": True,
                       "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                       b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_for(lambda: engine.stats()["running"] == 1, timeout=30, every=0.005), "never started decoding"
        client.shutdown(socket.SHUT_RDWR)  # the client leaves with no answer read
    assert wait_for(lambda: cancelled_count(gateway.url, "gateway") == before + 1)
    assert wait_for(lambda: engine.stats()["running"] == 0)
    assert engine.stats()["steps"] - steps_before < 449, "the student decoded the whole answer nobody read"


async def test_a_cancellation_as_the_first_event_lands_is_not_swallowed():
    """The client leaving in the very loop turn the student's first token arrives: the cancellation stands and the
    student's work stops. `asyncio.wait_for` on Python 3.11 returned the event instead and the student decoded the
    whole answer nobody read (the non-streamed timeout test above caught it, 2 runs in 5)."""
    produced = []

    async def student():
        for number in range(1000):
            produced.append(number)
            yield Delta(text="x")
            await asyncio.sleep(0)

    async def read_all():
        async for _ in with_deadline(student(), 5.0, "student"):
            pass

    consumer = asyncio.ensure_future(read_all())
    for _ in range(2):  # the first event is produced and its waiter released in these turns
        await asyncio.sleep(0)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert len(produced) < 10
