"""Limits and backpressure: per-key requests and tokens per minute (sliding windows, in memory and in a real Redis
shared by two worker processes), in-flight slots with a bounded queue, per-backend caps, a bounded engine queue and
a cheap length bound — each refusal a 429 or 503 with `Retry-After`, never a hang."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.auth import Principal
from gateway.limits import WINDOW_S, Admission, MemoryWindows, estimate, seconds_until_under
from gateway.metrics import GatewayMetrics
from gateway.settings import LimitsSettings
from runtime.credentials import new_key
from runtime.errors import Overloaded, RateLimited
from tests.conftest import ROOT, ThreadedServer, free_port, gateway_settings, stop, wait_until_up
from tests.gateway.test_confidence_routing import ESCALATE, write_policy
from tests.gateway.test_workers import metrics_folder

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"
CHAT = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 8, "temperature": 0}
HOLDER_TOKENS = 480  # with the ticket's 27 prompt tokens, just inside the demo models' 512-token context
QUEUE_TIMEOUT_S = 10.0  # what a queued refusal would wait; a refusal "at once" takes a small part of it


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ the windows


@given(limit=st.integers(1, 500), current=st.integers(0, 1000), previous=st.integers(0, 1000),
       into=st.floats(0, WINDOW_S, exclude_max=True))
def test_after_the_wait_the_window_is_under_its_limit(limit, current, previous, into):
    wait = seconds_until_under(limit, current, previous, into)
    assert wait >= 0
    later = into + wait
    if later >= WINDOW_S:  # the window has moved on by a minute (or two): what remains of today's counts
        current, previous, later = (0, current, later - WINDOW_S) if later < 2 * WINDOW_S else (0, 0, 0.0)
    assert estimate(current, previous, later) < limit + 1e-9


async def test_memory_windows_count_and_refuse():
    windows = MemoryWindows()
    now = 1_000 * WINDOW_S + 1.0
    for _ in range(3):
        assert (await windows.take("app", 3, None, now))[0]
    admitted, counts = await windows.take("app", 3, None, now)
    assert not admitted and counts.requests == 3
    assert (await windows.take("other", 3, None, now))[0]  # keys do not share a window
    half_later = now + WINDOW_S * 1.5  # the previous minute weighs half: 3 × 0.5 = 1.5 < 3
    assert (await windows.take("app", 3, None, half_later))[0]


async def test_admission_refuses_with_retry_after_and_counts_tokens():
    admission = Admission(LimitsSettings(key_requests_per_minute=2, key_tokens_per_minute=100), GatewayMetrics(),
                          "support")
    app = Principal("app", frozenset())
    await asyncio.to_thread(clear_of_a_minute_boundary, 5)
    first = await admission.admit(app)
    first.release()
    await first.spent(150)  # over the tokens per minute: the next request waits
    with pytest.raises(RateLimited) as refused:
        await admission.admit(app)
    assert refused.value.error_type == "tokens" and 1 <= refused.value.retry_after <= 2 * WINDOW_S
    assert refused.value.headers()["Retry-After"].isdigit()
    generous = Principal("generous", frozenset(), requests_per_minute=5)
    for _ in range(5):
        (await admission.admit(generous)).release()
    with pytest.raises(RateLimited, match="5 requests per minute"):
        await admission.admit(generous)


async def test_slots_queue_then_shed():
    admission = Admission(LimitsSettings(max_in_flight=1, max_queued=1, queue_timeout_s=0.3), GatewayMetrics(),
                          "support")
    anyone = Principal("anyone", frozenset())
    held = await admission.admit(anyone)
    waiting = asyncio.create_task(admission.admit(anyone))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="at capacity"):  # the queue (one place) is taken
        await admission.admit(anyone)
    held.release()
    handed = await asyncio.wait_for(waiting, 1)  # the freed slot went to the waiter
    with pytest.raises(Overloaded, match="within 0.3 s"):
        await admission.admit(anyone)
    handed.release()
    (await admission.admit(anyone)).release()
    assert admission.in_flight == 0


# ------------------------------------------------------------------------------------------------ through a gateway


@pytest.fixture(scope="module")
def limited(demo_dirs, engine_server):
    keys = {name: new_key()[0] for name in ("app", "tokens", "holder", "admin")}
    auth = {"keys": [{"name": "app", "sha256": digest(keys["app"]), "requests_per_minute": 2},
                     {"name": "tokens", "sha256": digest(keys["tokens"]), "tokens_per_minute": 60},
                     {"name": "holder", "sha256": digest(keys["holder"])}],
            "admin_sha256": digest(keys["admin"])}
    settings = gateway_settings(demo_dirs, engine_server, auth=auth,
                                limits=LimitsSettings(max_in_flight=1, max_queued=0, queue_timeout_s=QUEUE_TIMEOUT_S))
    with ThreadedServer(create_app(settings)) as server:
        yield server, keys


def post(server, key, body=CHAT, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}, **kwargs)


def clear_of_a_minute_boundary(seconds: float) -> None:
    """Wait, if need be, until `seconds` fit before the next wall-clock minute. The sliding window weighs the
    previous minute by how much of it is still inside the last 60 s, so requests that straddle a minute boundary
    are judged on 2 × (1 − ε) < 2: a test of an exact count must not straddle one."""
    into = time.time() % WINDOW_S
    if into + seconds > WINDOW_S:
        time.sleep(WINDOW_S - into + 0.05)


def samples(server, admin_key: str | None, name: str, **labels) -> list:
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    text = httpx.get(f"{server.url}/metrics", timeout=10, headers=headers).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]


def metric(server, admin_key: str | None, name: str, **labels) -> float:
    return sum(sample.value for sample in samples(server, admin_key, name, **labels))


def wait_for_free_slots(server, admin_key: str, timeout_s: float = 15) -> None:
    """The server frees a slot after the last byte it sends, or once it sees the client gone: a moment after the
    client is done with the response, not at once."""
    deadline = time.monotonic() + timeout_s
    while (admitted := metric(server, admin_key, "kdgate_admitted_requests")) != 0:
        assert time.monotonic() < deadline, f"{admitted} admission slots still held after {timeout_s} s"
        time.sleep(0.05)


@contextmanager
def long_stream_held(server, headers: dict):
    """A long stream in flight (its first chunk received) for the block's duration; the block gets an event set once
    the stream's last chunk has arrived."""
    long = CHAT | {"stream": True, "max_tokens": HOLDER_TOKENS, "ignore_eos": True}
    started, finished = threading.Event(), threading.Event()
    statuses = []

    def hold():
        try:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long, timeout=60,
                              headers=headers) as response:
                statuses.append(response.status_code)
                lines = response.iter_lines()
                next(lines)
                started.set()
                for _ in lines:
                    pass
            finished.set()
        finally:
            started.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert started.wait(30) and statuses == [200], f"the holding stream did not start: {statuses}"
    try:
        yield finished
    finally:
        holder.join(60)


def test_a_spent_key_gets_429_with_retry_after(limited):
    server, keys = limited
    clear_of_a_minute_boundary(15)
    assert [post(server, keys["app"]).status_code for _ in range(2)] == [200, 200]
    refused = post(server, keys["app"])
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["app"], max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="kdgate-demo", messages=CHAT["messages"], max_tokens=4)
    assert metric(server, keys["admin"], "kdgate_rate_limited_requests_total", key="app", kind="requests") == 2


def test_tokens_per_minute_count_what_was_served(limited):
    server, keys = limited
    stream = CHAT | {"stream": True, "max_tokens": 48}
    clear_of_a_minute_boundary(10)
    assert post(server, keys["tokens"], stream).status_code == 200  # its tokens are counted after the stream
    refused = post(server, keys["tokens"])
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"


def test_no_free_slot_and_no_queue_is_a_503_at_once(limited):
    server, keys = limited
    wait_for_free_slots(server, keys["admin"])
    shed_before = metric(server, keys["admin"], "kdgate_shed_requests_total", reason="queue_full")
    with long_stream_held(server, {"authorization": f"Bearer {keys['holder']}"}):
        started = time.monotonic()
        shed = post(server, keys["holder"])
        waited = time.monotonic() - started
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["code"] == "overloaded"
    assert waited < QUEUE_TIMEOUT_S / 5, waited  # refused at once, not after waiting out the queue timeout
    assert metric(server, keys["admin"], "kdgate_shed_requests_total", reason="queue_full") - shed_before == 1
    wait_for_free_slots(server, keys["admin"])  # the stream gave its slot back


def test_a_client_leaving_mid_stream_gives_its_slot_back(limited):
    server, keys = limited
    long = CHAT | {"stream": True, "max_tokens": HOLDER_TOKENS, "ignore_eos": True}
    for _ in range(3):
        wait_for_free_slots(server, keys["admin"])  # the one slot: free again after each leaver
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long, timeout=60,
                          headers={"authorization": f"Bearer {keys['holder']}"}) as response:
            assert response.status_code == 200
            next(response.iter_lines())
    wait_for_free_slots(server, keys["admin"])
    assert post(server, keys["holder"]).status_code == 200


def teacher_errors(server) -> dict[str, float]:
    """kdgate_errors_total{backend="teacher"} by error class."""
    return {sample.labels["error"]: sample.value
            for sample in samples(server, None, "kdgate_errors_total", backend="teacher")}


def assert_the_teacher_was_busy_not_late(before: dict[str, float], after: dict[str, float]) -> None:
    """Between the two readings the teacher failed once, and because its in-flight cap was full (BackendBusy), not
    because it missed its first-token deadline (UpstreamTimeout) or was down."""
    moved = {error: count - before.get(error, 0.0) for error, count in after.items()
             if count != before.get(error, 0.0)}
    assert moved == {"BackendBusy": 1}, moved


def test_a_saturated_teacher_leaves_the_student_answer(demo_dirs, engine_server, tmp_path):
    """The teacher's in-flight cap is taken by a long forced request: an escalation then gets the student's own
    answer (BackendBusy → teacher_unavailable) instead of queueing behind it. A teacher at its cap is waited for
    only as long as its first-token deadline (1 s here: long enough for the holder's own first token on a loaded
    box, short beside the holder's hundreds of tokens)."""
    from gateway.settings import BackendSettings, HandoffSettings, RoutingSettings

    write_policy(tmp_path / "policy.json", prefix_tokens=None, threshold=ESCALATE)  # every answer escalates
    routing = RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json",
                              handoff=HandoffSettings(enabled=False))
    teacher = BackendSettings(kind="http", base_url=engine_server.base_url, model=engine_server.model,
                              max_in_flight=1, first_token_timeout_s=1.0)
    settings = gateway_settings(demo_dirs, engine_server, routing=routing).model_copy(update={"teacher": teacher})
    with ThreadedServer(create_app(settings)) as server:
        student = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60,
                             headers={"x-kdgate-force": "student"}).json()["choices"][0]["message"]["content"]
        before = teacher_errors(server)
        with long_stream_held(server, {"x-kdgate-force": "teacher"}) as holder_finished:
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=60)
            holder_was_streaming = not holder_finished.is_set()
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-kdgate-route-reason"] == "teacher_unavailable"
        assert reply.json()["choices"][0]["message"]["content"] == student
        assert holder_was_streaming, "the holder finished first: the escalation may have waited for it"
        assert_the_teacher_was_busy_not_late(before, teacher_errors(server))


def test_the_cause_check_fails_on_a_teacher_that_was_late():
    """Mutation check: the same header after a missed first-token deadline, or with no failure counted, fails."""
    with pytest.raises(AssertionError):
        assert_the_teacher_was_busy_not_late({"BackendBusy": 2.0}, {"BackendBusy": 2.0, "UpstreamTimeout": 1.0})
    with pytest.raises(AssertionError):
        assert_the_teacher_was_busy_not_late({"BackendBusy": 1.0}, {"BackendBusy": 1.0})


def test_the_engine_refuses_a_prompt_far_beyond_its_context_before_tokenizing(gateway):
    huge = {"messages": [{"role": "user", "content": "x" * 900_000}], "max_tokens": 4}
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=huge, timeout=60,
                       headers={"x-kdgate-force": "student"})
    assert reply.status_code == 400 and "characters" in reply.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ Redis


async def test_redis_windows_are_shared_between_processes_state(redis_server):
    """Two admissions (as two processes would hold) on one Redis share one window."""
    settings = LimitsSettings(key_requests_per_minute=3, redis_url=redis_server.url)
    first, second = Admission(settings, GatewayMetrics(), "support"), Admission(settings, GatewayMetrics(), "support")
    await asyncio.to_thread(clear_of_a_minute_boundary, 5)
    key = Principal(f"shared-{os.getpid()}-{id(first)}", frozenset())
    try:
        outcomes = []
        for admission in (first, second, first, second, first):
            try:
                (await admission.admit(key)).release()
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("429")
        assert outcomes == ["ok", "ok", "ok", "429", "429"]
    finally:
        await first.aclose()
        await second.aclose()


async def test_deployments_sharing_a_redis_count_apart_and_replicas_of_one_count_together(redis_server):
    """Two deployments (two Helm releases, or two unrelated gateways) on one Redis, each with a key named `app` on a
    pair named `support`, limited to 2 requests a minute: their `limits.redis_prefix` keeps their windows apart, so
    neither spends the other's; two replicas of one deployment (one prefix) still share theirs."""
    limits = LimitsSettings(key_requests_per_minute=2, redis_url=redis_server.url)
    run = f"{os.getpid()}-{time.time_ns()}"  # the session's Redis keeps earlier tests' windows for the minute
    blue, green = (limits.model_copy(update={"redis_prefix": f"kdgate:limits:team-a:{release}-{run}"})
                   for release in ("blue", "green"))
    blue_1, blue_2, green_1 = (Admission(settings, GatewayMetrics(), "support") for settings in (blue, blue, green))
    await asyncio.to_thread(clear_of_a_minute_boundary, 5)
    try:
        outcomes = [await admitted(gateway, Principal("app", frozenset()))
                    for gateway in (blue_1, blue_2, green_1, green_1, blue_2, green_1)]
        assert outcomes == ["ok", "ok", "ok", "ok", "429", "429"]
    finally:
        for admission in (blue_1, blue_2, green_1):
            await admission.aclose()


async def test_a_colon_in_a_pair_or_key_name_does_not_join_two_windows(redis_server):
    """Pair `a:b` with key `c`, and pair `a` with key `b:c`: spelt into one Redis key unescaped, both were
    `PREFIX:a:b:c`; each is its own window."""
    settings = LimitsSettings(key_requests_per_minute=1, redis_url=redis_server.url,
                              redis_prefix=f"kdgate:limits:colons-{os.getpid()}-{time.time_ns()}")
    first, second = Admission(settings, GatewayMetrics(), "a:b"), Admission(settings, GatewayMetrics(), "a")
    await asyncio.to_thread(clear_of_a_minute_boundary, 5)
    try:
        assert [await admitted(first, Principal("c", frozenset())),
                await admitted(second, Principal("b:c", frozenset()))] == ["ok", "ok"]
    finally:
        await first.aclose()
        await second.aclose()


async def admitted(admission: Admission, principal: Principal) -> str:
    try:
        (await admission.admit(principal)).release()
        return "ok"
    except RateLimited:
        return "429"


@pytest.mark.parametrize("windows", ["memory", "redis"])
def test_each_pair_counts_a_keys_requests_in_its_own_window_in_memory_and_in_redis(windows, engine_server,
                                                                                   redis_server, tmp_path):
    """Two pairs behind one gateway (gateway.pairs), one key limited to 2 requests a minute on both: spending it on
    one pair leaves the other pair's 2 whole, whether the windows are in the process's memory or in Redis. Each
    pair keeps its own limits; Redis used to name the key alone, so the second pair refused a key it had never
    served (and a pair's own `requests_per_minute` was judged on the other pair's requests too)."""
    from gateway.pairs import Pairs
    from gateway.settings import BackendSettings, GatewaySettings, ShadowSettings, StudentsSettings

    key, name = new_key()[0], f"pairs-{windows}-{tmp_path.name}"
    auth = {"keys": [{"name": name, "sha256": digest(key), "requests_per_minute": 2}]}  # the same keys on both
    limits = LimitsSettings(redis_url=redis_server.url if windows == "redis" else None)
    backend = BackendSettings(kind="http", base_url=engine_server.base_url, model=engine_server.model)
    apps = {model: create_app(GatewaySettings(served_model=model, student=backend, teacher=None, auth=auth,
                                              limits=limits, shadow=ShadowSettings(enabled=False, store_url=None),
                                              students=StudentsSettings(enabled=False)))
            for model in ("support", "billing")}
    with ThreadedServer(Pairs(apps, max_body_bytes=1_048_576)) as server:
        clear_of_a_minute_boundary(20)
        statuses = [post(server, key, CHAT | {"model": model, "max_tokens": 1}).status_code
                    for model in ("support", "support", "billing", "billing", "support", "billing")]
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_a_redis_that_is_down_admits_and_counts():
    metrics = GatewayMetrics()
    port = free_port()  # nothing listens there
    admission = Admission(LimitsSettings(key_requests_per_minute=1, redis_url=f"redis://127.0.0.1:{port}/0"),
                          metrics, "support")
    key = Principal("app", frozenset())
    for _ in range(3):
        (await admission.admit(key)).release()
    assert metrics.limit_errors._value.get() == 3
    await admission.aclose()


async def test_a_redis_that_never_answers_costs_one_request_its_timeout_not_every_request():
    """A server that accepts connections and never answers (a hung Redis): the first request waits out the socket
    timeout (1 s) and opens the limiter's breaker; the next ones are admitted at once, counted; after
    LIMITER_RETRY_S one request asks again. Every request used to pay the second."""
    import socket

    from gateway.limits import LIMITER_RETRY_S

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # the kernel accepts; nobody ever reads or answers
    metrics = GatewayMetrics()
    admission = Admission(LimitsSettings(key_requests_per_minute=1,
                                         redis_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0"), metrics,
                          "support")
    key = Principal("app", frozenset())
    try:
        waits = []
        for _ in range(20):
            started = time.monotonic()
            (await admission.admit(key)).release()
            waits.append(time.monotonic() - started)
        assert waits[0] >= 0.9 and max(waits[1:]) < 0.2, waits
        assert metrics.limit_errors._value.get() == 20  # each admitted without the limiter, counted
        admission._limiter_down_until = time.monotonic()  # the retry interval has passed
        started = time.monotonic()
        (await admission.admit(key)).release()
        assert time.monotonic() - started >= 0.9 and LIMITER_RETRY_S > 1  # asked again once, still hung
    finally:
        await admission.aclose()
        hung.close()


def calls_by_worker(folder: Path, key_name: str) -> dict[str, dict[str, float]]:
    """{worker pid: {HTTP status: calls}} of one key, read from each worker's own metrics file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    calls = {}
    for path in folder.glob("counter_*.db"):
        statuses = {sample.labels["status"]: sample.value for family in MultiProcessCollector.merge([str(path)])
                    for sample in family.samples
                    if sample.name == "kdgate_api_requests_total" and sample.labels["key"] == key_name}
        if statuses:
            calls[path.stem.rsplit("_", 1)[1]] = statuses
    return calls


def assert_one_limit_shared(calls: dict[str, dict[str, float]], limit: int) -> None:
    """Two workers answered the key, the calls they admitted add up to the limit, and one refused while it had
    admitted fewer than the limit itself: it judged on counts the other worker made."""
    assert len(calls) == 2, f"not two workers answering: {calls}"
    assert sum(statuses.get("200", 0) for statuses in calls.values()) == limit, calls
    assert any(statuses.get("429", 0) and statuses.get("200", 0) < limit for statuses in calls.values()), calls


def test_the_shared_limit_check_fails_on_workers_that_count_alone():
    """Mutation check: what in-memory windows give (each worker admits the limit), or one worker answering all."""
    with pytest.raises(AssertionError):
        assert_one_limit_shared({"1": {"200": 4, "429": 1}, "2": {"200": 4, "429": 1}}, limit=4)
    with pytest.raises(AssertionError):
        assert_one_limit_shared({"1": {"200": 4, "429": 6}}, limit=4)


@pytest.mark.slow
def test_two_workers_share_one_limit_through_redis(demo_dirs, engine_server, redis_server, tmp_path):
    """kdgate serve --workers 2 with http backends and a key limited to 4 requests a minute: 4 requests are
    admitted in all, though both workers answer the key, and the count they share is the one in Redis."""
    import redis

    key, name = new_key()[0], f"shared-{tmp_path.name}"
    config = tmp_path / "kdgate.yaml"
    config.write_text(json.dumps({
        "student": {"kind": "http", "base_url": engine_server.base_url, "model": engine_server.model},
        "teacher": {"kind": "http", "base_url": engine_server.base_url, "model": engine_server.model},
        "shadow": {"enabled": False, "store_url": f"sqlite:///{tmp_path / 'store.sqlite3'}"},  # not the shared default
        "auth": {"keys": [{"name": name, "sha256": digest(key), "requests_per_minute": 4}]},
        "limits": {"redis_url": redis_server.url}}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDGATE_")}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 — closed with the process
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--config", str(config), "--port",
                                str(port), "--workers", "2"], cwd=ROOT, env=env | {"PYTHONUNBUFFERED": "1"},
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process, timeout=120)
        folder = metrics_folder(tmp_path / "serve.log")
        statuses = []
        clear_of_a_minute_boundary(30)
        minute = int(time.time() // WINDOW_S)
        # A new connection each time, so the kernel spreads them over both workers; past the first 10, only until
        # both have answered the key.
        while len(statuses) < 10 or (len(calls_by_worker(folder, name)) < 2 and len(statuses) < 40):
            with httpx.Client(timeout=60) as client:
                reply = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT,
                                    headers={"authorization": f"Bearer {key}"})
                statuses.append(reply.status_code)
        assert statuses.count(200) == 4 and statuses.count(429) == len(statuses) - 4, statuses
        assert_one_limit_shared(calls_by_worker(folder, name), limit=4)
        windows = redis.Redis.from_url(redis_server.url)
        try:
            stored = {stored_key.decode(): int(windows.get(stored_key))
                      for stored_key in windows.scan_iter(f"kdgate:limits:kdgate-demo:{name}:*")}
        finally:
            windows.close()
        assert stored == {f"kdgate:limits:kdgate-demo:{name}:{minute}:r": 4}  # the admitted requests, in one place
    finally:
        stop(process)
        log.close()
