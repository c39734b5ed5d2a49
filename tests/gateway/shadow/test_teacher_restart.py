"""A teacher restart loses no shadow work: 100 jobs acknowledged while the teacher is down are retried with backoff
until it is back, and every one becomes a record (each job used to be tried three times within ~40 ms and dropped).
A job is given up only after `shadow.retry_for_s`, and that is counted."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distill.demo import task
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings
from gateway.shadow.jobs import JobQueue
from runtime.store.records import ShadowStore
from tests.conftest import EngineServer, ThreadedServer, free_port, gateway_settings, start_engine_server, stop

pytestmark = pytest.mark.slow
REQUESTS = 100


def teacher_on(port: int, demo_dirs) -> EngineServer:
    return start_engine_server(demo_dirs[1], "demo-teacher", port=port)


def counter(url: str, name: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {tuple(sorted(sample.labels.items())): sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def test_jobs_queued_while_the_teacher_restarts_all_become_records(demo_dirs, tmp_path):
    from gateway.app import create_app

    port = free_port()
    teacher = teacher_on(port, demo_dirs)
    store_url = f"sqlite:///{tmp_path / 'shadow.sqlite3'}"
    settings = gateway_settings(demo_dirs, teacher, routing=RoutingSettings(
        policy="student_only", handoff=HandoffSettings(enabled=False)), shadow=ShadowSettings(
        sample_rate=1.0, store_url=store_url, concurrency=2, timeout_s=10, queue_size=1000))
    tickets = task.take("test", REQUESTS, seed=5)
    try:
        with ThreadedServer(create_app(settings)) as gateway:
            os.kill(teacher.process.pid, signal.SIGKILL)  # the teacher goes away, as in a rolling restart
            teacher.process.wait(timeout=30)

            def ask(ticket) -> int:
                body = {"messages": ticket.messages(), "max_tokens": 8, "temperature": 0}
                return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60).status_code

            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(ask, tickets)) == [200] * REQUESTS  # the student serves; shadow work waits
            acknowledged = sum(counter(gateway.url, "kdgate_shadow_acknowledged_total").values())
            assert acknowledged == REQUESTS
            time.sleep(5)  # the teacher stays down long enough for every job to have failed at least once
            failed = sum(counter(gateway.url, "kdgate_shadow_failed_total").values())
            assert failed >= REQUESTS, "the jobs should have been tried against the dead teacher"
            teacher = teacher_on(port, demo_dirs)  # back, on the same address

            store = ShadowStore(store_url)
            deadline = time.monotonic() + 240
            while JobQueue(store).pending() and time.monotonic() < deadline:
                time.sleep(1)
            records = list(store.iter_records())
            store.close()
            dropped = counter(gateway.url, "kdgate_shadow_dropped_total")
        assert len(records) == REQUESTS and all(record.teacher_answer for record in records)
        assert sum(dropped.values()) == 0, dropped
    finally:
        stop(teacher.process)
