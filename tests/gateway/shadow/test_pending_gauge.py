"""`kdgate_shadow_pending_jobs` is the shadow backlog while there is one. It was counted only when the worker had
been idle for a second, so a worker that always had a job to take (a teacher behind the traffic, the case the gauge
is for) kept showing the count from before the traffic: 0."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.shadow.jobs import JobQueue
from runtime.store.records import ShadowStore
from tests.conftest import stop
from tests.gateway.shadow.test_durability import serve, traffic

pytestmark = pytest.mark.slow
BACKLOG = 10  # stored jobs that make a backlog here


def pending_gauge(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return max(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "kdgate_shadow_pending_jobs")


def test_the_pending_gauge_shows_the_backlog_while_the_worker_is_busy(tmp_path):
    store_url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    process, url = serve(tmp_path, store_url)  # 4 clients, one teacher call at a time: the jobs pile up
    store = ShadowStore(store_url)
    try:
        jobs, during = JobQueue(store), []  # (stored jobs before, the gauge, stored jobs after)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(traffic, url)
            deadline = time.monotonic() + 300
            while not (sent.done() and jobs.pending() == 0) and time.monotonic() < deadline:
                before = jobs.pending()
                gauge = pending_gauge(url)
                during.append((before, gauge, jobs.pending()))
                time.sleep(0.2)
            sent.result()
        backlog = [(before, gauge, after) for before, gauge, after in during if min(before, after) >= BACKLOG]
        assert backlog, f"the test needs a backlog of {BACKLOG} stored jobs or more; it saw {during[-20:]}"
        assert all(gauge >= 1 for _, gauge, _ in backlog), f"the gauge missed the backlog: {backlog[:10]}"
        largest = max(min(before, after) for before, _, after in backlog)
        assert max(gauge for _, gauge, _ in backlog) >= largest / 2, backlog
        time.sleep(2.5)  # drained: an idle worker counts again
        assert pending_gauge(url) == 0
    finally:
        store.close()
        stop(process)
