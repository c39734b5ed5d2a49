"""Circuit breakers, the background health check and the retry budget, against real engine servers (paused with
SIGSTOP, or behind a proxy that drops connections) and on their own state machines."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.breaker import CircuitBreaker, State, guarded
from gateway.settings import (
    BackendSettings,
    GatewaySettings,
    HandoffSettings,
    ResilienceSettings,
    RoutingSettings,
    ShadowSettings,
)
from runtime.backends.retry import MIN_RETRIES, RetryBudget
from runtime.contract import Delta
from runtime.errors import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from tests.conftest import ThreadedServer, free_port, start_engine_server, stop
from tests.gateway.test_confidence_routing import ESCALATE, write_policy

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"
CHAT = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 16, "temperature": 0}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_probes_and_closes():
    clock = Clock()
    breaker = CircuitBreaker("teacher", failure_threshold=3, open_s=10, clock=clock)
    for _ in range(2):
        breaker.failed("refused")
    assert breaker.allow() and breaker.state is State.CLOSED
    breaker.failed("refused")
    assert breaker.state is State.OPEN and not breaker.allow()
    clock.now = 10.0
    assert breaker.allow() and breaker.state is State.HALF_OPEN  # the one probe
    assert not breaker.allow()  # others wait while it is out
    breaker.failed("still refused")
    assert breaker.state is State.OPEN and not breaker.allow()
    clock.now = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is State.CLOSED and breaker.allow()
    breaker.trip("health check")
    breaker.healthy()
    assert breaker.state is State.HALF_OPEN


async def test_a_clients_error_does_not_open_the_circuit():
    breaker = CircuitBreaker("student", failure_threshold=1)

    async def rejecting():
        raise UpstreamRejected("context too long", backend="student", status_code=400)
        yield  # pragma: no cover

    with pytest.raises(UpstreamRejected):
        async for _ in guarded(breaker, rejecting):
            pass
    assert breaker.state is State.CLOSED
    breaker.trip("test")
    with pytest.raises(UpstreamUnavailable, match="circuit is open"):
        async for _ in guarded(breaker, rejecting):
            pass


async def test_missed_deadlines_while_other_streams_move_are_load_not_failures():
    """Under overload a backend misses first-token deadlines while it streams other answers: those misses do not
    open its circuit (they opened both under overload); the same misses from a backend that moves nothing do."""
    clock = Clock()
    breaker = CircuitBreaker("teacher", failure_threshold=2, open_s=10, clock=clock)

    async def streaming():
        yield Delta(text="a", logprobs=())

    async def late():
        raise UpstreamTimeout("sent nothing within its first-token deadline", backend="teacher")
        yield  # pragma: no cover

    async for _ in guarded(breaker, streaming):  # another request's tokens flow
        pass
    for _ in range(5):
        clock.now += 1.0
        with pytest.raises(UpstreamTimeout):
            async for _ in guarded(breaker, late):
                pass
    assert breaker.state is State.CLOSED  # loaded, not failing: the fallbacks still get their chance
    clock.now += 10.0  # nothing has moved for open_s: the misses are the backend's
    for _ in range(2):
        with pytest.raises(UpstreamTimeout):
            async for _ in guarded(breaker, late):
                pass
    assert breaker.state is State.OPEN


def test_the_retry_budget_is_a_share_of_requests_with_a_floor():
    clock = Clock()
    budget = RetryBudget(0.1, clock=clock)
    for _ in range(100):
        budget.requested()
    assert sum(budget.spend() for _ in range(50)) == 10
    clock.now = 11.0  # the window moved on: only the floor remains
    assert sum(budget.spend() for _ in range(50)) == MIN_RETRIES
    assert not RetryBudget(0.0).spend()


def metric(server, name: str, **labels) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.slow
def test_a_paused_teacher_is_found_by_the_health_check_and_skipped_until_it_is_back(demo_dirs, tmp_path):
    """SIGSTOP the teacher: the health check fails, its circuit opens and kdgate_backend_up says 0, so escalations
    get the student's answer at once rather than after the first-token deadline; SIGCONT brings it back."""
    teacher = start_engine_server(demo_dirs[1], "demo-teacher")
    try:
        write_policy(tmp_path / "policy.json", prefix_tokens=None, threshold=ESCALATE)  # every answer escalates
        settings = GatewaySettings(
            student=BackendSettings(model_dir=demo_dirs[0], threads=1),
            teacher=BackendSettings(kind="http", base_url=teacher.base_url, model=teacher.model,
                                    first_token_timeout_s=8.0),
            routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json",
                                    handoff=HandoffSettings(enabled=False)),
            shadow=ShadowSettings(enabled=False),
            resilience=ResilienceSettings(health_interval_s=0.5, breaker_open_s=1.0))
        with ThreadedServer(create_app(settings)) as server:
            assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60).headers[
                "x-kdgate-route"] == "teacher"
            os.kill(teacher.process.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 20
            while metric(server, "kdgate_circuit_state", backend="teacher") != 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert metric(server, "kdgate_backend_up", backend="teacher") == 0
            started = time.monotonic()
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60)
            assert reply.headers["x-kdgate-route-reason"] == "teacher_unavailable"
            assert time.monotonic() - started < 4.0  # not the 8 s deadline: the open circuit answered at once
            os.kill(teacher.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            route = None
            while route != "teacher" and time.monotonic() < deadline:
                time.sleep(0.5)
                route = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60).headers[
                    "x-kdgate-route"]
            assert route == "teacher" and metric(server, "kdgate_circuit_state", backend="teacher") == 0
            assert metric(server, "kdgate_circuit_transitions_total", backend="teacher", state="open") >= 1
    finally:
        os.kill(teacher.process.pid, signal.SIGCONT)
        stop(teacher.process)


class DroppingProxy:
    """A TCP proxy in front of a real server that reads the first `drop` connections' requests and closes them
    without a response (a keep-alive connection closed under the client), then forwards bytes both ways."""

    def __init__(self, target_port: int, drop: int):
        self.target_port = target_port
        self.drop = drop
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, reader, writer):
        if self.drop > 0:
            self.drop -= 1
            await reader.read(65536)
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port),
                                         self.loop).result(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_request_dropped_before_any_response_is_sent_once_more(demo_dirs, engine_server):
    port = int(engine_server.base_url.rsplit(":", 1)[1].split("/")[0])
    with DroppingProxy(port, drop=1) as proxy:
        settings = GatewaySettings(
            student=BackendSettings(kind="http", base_url=f"http://127.0.0.1:{proxy.port}/v1",
                                    model=engine_server.model),
            teacher=None, shadow=ShadowSettings(enabled=False), resilience=ResilienceSettings(health_interval_s=None))
        with ThreadedServer(create_app(settings)) as server:
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60)
            assert reply.status_code == 200, reply.text
            assert metric(server, "kdgate_backend_retries_total", backend="student") == 1
