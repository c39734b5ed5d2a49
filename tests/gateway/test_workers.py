"""`kdgate serve --workers N`: several real worker processes on one port, `/metrics` summed over all of them, one
shadow store written by all of them, and a clear refusal where workers cannot work (local backends)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.store.records import ShadowStore
from tests.conftest import ROOT, free_port, start_engine_server, stop, wait_until_up

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"
REQUESTS = 24
POLL_INTERVAL_S = 1.0  # students.poll_interval_s of the workers
SWITCH_MARGIN_S = 15.0  # scheduling on a loaded box, never the poll itself


@pytest.fixture(scope="module")
def student_server(demo_dirs):
    server = start_engine_server(demo_dirs[0], "demo-student")
    yield server
    stop(server.process)


def start_workers(tmp_path: Path, student, teacher, workers: int = 2):
    port = free_port()
    store = tmp_path / "shadow.sqlite3"
    config = {"student": {"kind": "http", "base_url": student.base_url, "model": student.model},
              "teacher": {"kind": "http", "base_url": teacher.base_url, "model": teacher.model},
              "shadow": {"enabled": True, "sample_rate": 1.0, "store_url": f"sqlite:///{store}"},
              "students": {"poll_interval_s": POLL_INTERVAL_S}, "log_level": "warning"}
    config_file = tmp_path / "kdgate.yaml"
    config_file.write_text(json.dumps(config))
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 — closed by the caller with the process
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port), "--config",
                                str(config_file), "--workers", str(workers)], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env=env | {"PYTHONUNBUFFERED": "1"})
    wait_until_up(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}", store, log


def scrape(url: str) -> dict[tuple, float]:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str) -> float:
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)


def metrics_folder(log_path: Path) -> Path:
    match = re.search(r"files in (\S+)", log_path.read_text())
    assert match, "kdgate serve did not say where the multiprocess metrics live"
    return Path(match.group(1))


@pytest.mark.slow
def test_two_workers_count_every_request_in_every_scrape(tmp_path, student_server, engine_server):
    process, url, store_path, log = start_workers(tmp_path, student_server, engine_server)
    try:
        for index in range(REQUESTS):  # a new connection each time, so the kernel spreads them over the workers
            body = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 16, "stream": index % 2 == 0}
            with httpx.Client(timeout=30) as client:
                response = client.post(f"{url}/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
        folder = metrics_folder(tmp_path / "serve.log")
        served_by = {path.name.rsplit("_", 1)[1] for path in folder.glob("counter_*.db")}
        assert len(served_by) >= 2, f"only {served_by} wrote metrics: the test did not reach two workers"
        for _ in range(6):  # whichever worker answers the scrape reports all of them
            samples = scrape(url)
            assert total(samples, "kdgate_requests_total") == REQUESTS
            assert total(samples, "kdgate_time_to_first_token_seconds_count") == REQUESTS
            assert total(samples, "kdgate_requests_in_flight") == 0
        deadline = time.monotonic() + 60
        store = ShadowStore(f"sqlite:///{store_path}")
        try:  # every worker's shadow worker writes into the one store the parent migrated
            while store.count() < REQUESTS and time.monotonic() < deadline:
                time.sleep(0.5)
            assert store.count() == REQUESTS
        finally:
            store.close()
        assert "Traceback" not in (tmp_path / "serve.log").read_text()
    finally:
        stop(process)
        log.close()


def test_workers_refuse_local_backends(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    result = subprocess.run([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(free_port()),
                             "--workers", "2"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    message = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # typer draws a wrapped box
    assert "--workers" in message and "student and teacher are local" in message and "kdgate engine" in message


def test_dead_workers_live_gauges_are_forgotten(tmp_path):
    """A worker killed mid-request leaves its in-flight gauge behind; the next worker to start drops it."""
    script = ("from prometheus_client import Gauge; import os, time; "
              "Gauge('g', 'in flight', multiprocess_mode='livesum').inc(); print(os.getpid(), flush=True); "
              "time.sleep(60)")
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    victim = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pid = int(victim.stdout.readline())
    victim.kill()
    victim.wait()
    from gateway.workers import reap_dead_workers, scrape_registry

    assert scrape_registry(tmp_path).get_sample_value("g") == 1.0  # the dead worker still counts
    reap_dead_workers(tmp_path)
    assert scrape_registry(tmp_path).get_sample_value("g") is None
    assert not list(tmp_path.glob(f"gauge_livesum_{pid}.db"))


@pytest.mark.slow
def test_a_promotion_reaches_every_worker_at_its_next_poll(tmp_path, student_server, engine_server):
    """The store's slot is the one truth: the worker that takes the admin call switches at once, the other at its
    next poll (`students.poll_interval_s`, 1 s). `kdgate_student_slot_revision` is the lowest revision any live
    worker serves, so it reads 2 only once both have switched. The deadline is that poll plus a margin for a loaded
    2-core box (the switch opens an HTTP backend; a worker that never polls would never get there)."""
    process, url, _, log = start_workers(tmp_path, student_server, engine_server)
    try:
        registered = httpx.post(f"{url}/admin/v1/students", timeout=30, json={
            "name": "v2", "base_url": engine_server.base_url, "served_model": engine_server.model})
        assert registered.status_code == 201, registered.text
        assert httpx.post(f"{url}/admin/v1/students/v2/promote", timeout=60).status_code == 200
        promoted = time.monotonic()
        while total(scrape(url), "kdgate_student_slot_revision") != 2:
            assert time.monotonic() - promoted < POLL_INTERVAL_S + SWITCH_MARGIN_S, \
                f"a worker still serves the old slot {POLL_INTERVAL_S + SWITCH_MARGIN_S:g} s after the promotion"
            time.sleep(0.05)
        versions = set()
        for _ in range(12):  # new connections: both workers
            with httpx.Client(timeout=30) as client:
                reply = client.post(f"{url}/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": TICKET}], "max_tokens": 4})
            versions.add(reply.headers["x-kdgate-student-version"])
        assert versions == {"v2"}
    finally:
        stop(process)
        log.close()
