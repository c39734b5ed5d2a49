"""The SQLite store's `-shm` mapping broken under `kdgate serve` (the file truncated, as a disk tool or another
process can): SQLite's next access is a SIGBUS, which no Python code can survive. What the gateway does: it dies
with every thread's traceback in its log (it died with nothing logged), and a restart (what its supervisor does)
finds every acknowledged record and job, since SQLite rebuilds the index from the write-ahead log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from distill.demo import task
from gateway.shadow.jobs import JobQueue
from runtime.store.records import ShadowStore
from tests.conftest import free_port, stop, wait_until_up

pytestmark = pytest.mark.slow
REQUESTS = 8


def serve(workdir, store_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    env |= {"KDGATE_SHADOW__SAMPLE_RATE": "1", "KDGATE_SHADOW__STORE_URL": store_url, "KDGATE_STUDENT__THREADS": "1",
            "KDGATE_TEACHER__THREADS": "1", "KDGATE_ROUTING__HANDOFF__ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    log = (workdir / "serve.log").open("a")
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
    return process, f"http://127.0.0.1:{port}"


def test_a_broken_shm_mapping_dies_with_a_traceback_and_a_restart_loses_nothing(tmp_path):
    path = tmp_path / "shadow.sqlite3"
    store_url = f"sqlite:///{path}"
    process, url = serve(tmp_path, store_url)
    try:
        for ticket in task.take("test", REQUESTS, seed=4):
            body = {"messages": ticket.messages(), "max_tokens": 8, "temperature": 0}
            assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        time.sleep(1)  # acknowledged: in the store as jobs or records
        with open(f"{path}-shm", "r+b") as shm:
            shm.truncate(0)
        for _ in range(40):  # the shadow worker and the slot poller touch the store every second
            if process.poll() is not None:
                break
            time.sleep(0.5)
        assert process.returncode == -signal.SIGBUS
    finally:
        stop(process)
    log = (tmp_path / "serve.log").read_text()
    assert "Fatal Python error: Bus error" in log and "most recent call first" in log
    store = ShadowStore(store_url)
    survived = JobQueue(store).request_ids()
    store.close()
    assert len(survived) == REQUESTS  # every acknowledged job is there, as its record or still pending
    process, _ = serve(tmp_path, store_url)  # and the restarted gateway completes them
    try:
        store = ShadowStore(store_url)
        deadline = time.monotonic() + 120
        while store.count() < REQUESTS and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.count() == REQUESTS
        store.close()
    finally:
        stop(process)
