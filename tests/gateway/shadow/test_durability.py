"""Shadow work survives the gateway's exit: every job acknowledged before a SIGKILL or a SIGTERM is in the store
(as its record or as a pending job) and the next start completes it — no record lost, none duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distill.demo import task
from gateway.shadow.jobs import JobQueue
from runtime.store.records import ShadowStore
from tests.conftest import free_port, stop, wait_until_up

pytestmark = pytest.mark.slow
REQUESTS = 100


def serve(workdir, store_url: str, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    settings = {"KDGATE_SHADOW__SAMPLE_RATE": "1", "KDGATE_SHADOW__STORE_URL": store_url,
                "KDGATE_SHADOW__CONCURRENCY": "1", "KDGATE_SHADOW__TIMEOUT_S": "5", "KDGATE_SHADOW__QUEUE_SIZE": "1000",
                "KDGATE_STUDENT__THREADS": "1", "KDGATE_TEACHER__THREADS": "1", "KDGATE_LOG_LEVEL": "warning"} | env
    with open(Path(workdir) / "gateway.log", "ab") as log:  # what a failed test reads: the gateway's own account
        process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                                   env=clean | settings, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/readyz", process, timeout=120)
    return process, url


def traffic(url: str) -> None:
    tickets = task.take("test", REQUESTS, seed=11)

    def one(ticket):
        body = {"messages": ticket.messages(), "max_tokens": 64, "temperature": 0}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, tickets)) == [200] * REQUESTS


def acknowledged(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "kdgate_shadow_acknowledged_total")


def completed_after_restart(workdir, store_url: str, expected_ids: set[str]) -> None:
    process, _ = serve(workdir, store_url)
    try:
        store = ShadowStore(store_url)
        jobs = JobQueue(store)
        deadline = time.monotonic() + 240
        while jobs.pending() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert jobs.pending() == 0, "the restarted gateway did not finish the stored jobs"
        records = list(store.iter_records())
        ids = [record.request_id for record in records]
        assert len(ids) == len(set(ids)) == len(expected_ids) and set(ids) == expected_ids  # none lost, none twice
        assert all(record.teacher_answer for record in records)
        store.close()
    finally:
        stop(process)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_no_acknowledged_shadow_job_is_lost(tmp_path, how):
    store_url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    process, url = serve(tmp_path, store_url, KDGATE_SHADOW__DRAIN_TIMEOUT_S="1")
    try:
        traffic(url)
        acked = acknowledged(url)  # counted before the signal; more may follow before it lands
        assert acked >= 1
        os.kill(process.pid, getattr(signal, how))
        process.wait(timeout=60)
    finally:
        stop(process)
    store = ShadowStore(store_url)
    survived = JobQueue(store).request_ids()
    left = JobQueue(store).pending()
    store.close()
    assert len(survived) >= acked, f"{acked:.0f} jobs were acknowledged, {len(survived)} are in the store"
    assert left > 0, "the test needs jobs left pending at the signal to show that they resume"
    completed_after_restart(tmp_path, store_url, survived)
