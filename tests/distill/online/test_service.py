"""The trainer service as Alertmanager and ops meet it: the v4 webhook (selector, resolved alerts, retries, bad
bodies, tokens), the jobs API, and the runner with real job processes (skipped, cancelled, timed out, killed, and
a trainer killed mid-job then restarted)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from transformers import AutoTokenizer

from distill.demo import task
from distill.online.app import create_trainer_app
from distill.online.settings import load_trainer_settings
from runtime.credentials import new_key
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersion, StudentVersions
from tests.conftest import ROOT, ThreadedServer, free_port, stop, wait_until_up
from tests.distill.online.records import make_records

ALERTS_KEY, ADMIN_KEY = new_key()[0], new_key()[0]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def webhook(status: str = "firing", labels: dict | None = None, starts: str = "2026-12-04T10:00:00Z",
            fingerprint: str = "f1") -> dict:
    labels = {"alertname": "KdgateStudentDivergenceHigh", "action": "redistill"} | (labels or {})
    return {"version": "4", "groupKey": "{}:{alertname=\"KdgateStudentDivergenceHigh\"}", "truncatedAlerts": 0,
            "status": status, "receiver": "kdgate-trainer", "groupLabels": {}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": status, "labels": labels, "annotations": {"summary": "drift"}, "startsAt": starts,
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
                        "fingerprint": fingerprint}]}


def trainer_config(tmp_path, **extra) -> tuple:
    config = {"store_url": f"sqlite:///{tmp_path / 'store.sqlite3'}", "work_dir": str(tmp_path / "work"),
              "poll_interval_s": 0.2, "auth": {"alerts_sha256": digest(ALERTS_KEY), "admin_sha256": digest(ADMIN_KEY)},
              "gateway": {"url": f"http://127.0.0.1:{free_port()}"}, "dataset": {"min_records": 10},
              "golden": {"examples": 20}, "train": {"threads": 1}} | extra
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_trainer_settings(path), path


def call(server, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {}) | ({"Authorization": f"Bearer {key}"} if key else {})
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)


def wait_job(server, job_id: int, states: tuple[str, ...], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(server, "GET", f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def wait_step(read_job, step: str, timeout: float = 120.0) -> dict:
    """Poll `read_job()` until the job is running its `step`; fail at once when it ends first, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        job = read_job()
        if job["state"] == "running" and job["step"] == step:
            return job
        assert job["state"] in ("queued", "running"), f"the job ended before its {step!r} step: {job}"
        assert time.monotonic() < deadline, f"the job did not reach its {step!r} step in {timeout:g} s: {job}"
        time.sleep(0.2)


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]  # after "(command name)", which may hold spaces
    except (FileNotFoundError, ProcessLookupError):
        return None


def runs_a_job(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"run-job" in cmdline.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def seed_records(settings, demo_dirs, count: int = 60) -> None:
    """An active student in the store and `count` records after it became active."""
    store = ShadowStore(settings.store_url)
    try:
        StudentVersions(store).seed(StudentVersion(name="initial", kind="model", model_dir=str(demo_dirs[0])))
        tokenizer = AutoTokenizer.from_pretrained(demo_dirs[0])
        for record in make_records(tokenizer, task.take("train", count, seed=3),
                                   start=datetime.now(UTC) + timedelta(seconds=1)):
            store.write(record)
    finally:
        store.close()


@pytest.fixture
def trainer(tmp_path):
    settings, path = trainer_config(tmp_path)
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        yield server


def test_a_firing_alert_queues_one_job_and_a_retry_finds_it(trainer):
    first = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook())
    assert first.status_code == 200 and len(first.json()["queued"]) == 1
    job_id = first.json()["queued"][0]
    retried = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook())
    assert retried.json() == {"queued": [], "already": [job_id], "ignored": 0}
    job = call(trainer, "GET", f"/v1/jobs/{job_id}").json()
    assert job["trigger"] == "alert" and job["options"]["alert"]["name"] == "KdgateStudentDivergenceHigh"
    ended = wait_job(trainer, job_id, ("skipped",))  # an empty store: nothing to learn from
    assert "usable records" in ended["reason"]
    again = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook())  # the same firing, after its job
    assert again.json()["already"] == [job_id]


def test_resolved_and_unselected_alerts_start_nothing(trainer):
    resolved = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(status="resolved"))
    other = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(labels={"action": "page"}))
    assert resolved.json() == other.json() == {"queued": [], "already": [], "ignored": 1}
    (noted,) = call(trainer, "GET", "/v1/jobs").json()["jobs"]  # the resolve is remembered, as a job that never ran
    assert (noted["state"], noted["started_at"]) == ("skipped", None) and "resolved before" in noted["reason"]


def test_a_stale_firing_that_arrives_after_its_resolve_starts_nothing(trainer):
    """Alertmanager's firing delivery was retried late and came after the resolve: it used to start a job."""
    call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(status="resolved"))
    stale = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook())
    assert stale.json()["queued"] == [] and len(stale.json()["already"]) == 1
    assert [job["state"] for job in call(trainer, "GET", "/v1/jobs").json()["jobs"]] == ["skipped"]
    later = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(starts="2026-12-04T11:00:00Z"))
    assert len(later.json()["queued"]) == 1  # the same alert firing again later is a new firing: a job


def test_a_promotion_ends_the_drift_episode_an_alert_about_the_replaced_version_starts_no_second_job(trainer,
                                                                                                      tmp_path):
    """The drift alert names the student version it measured. After the job it started promoted a new version, the
    same alert still firing (its series lasts a window past the switch), or firing again late, about the replaced
    version starts nothing; the new version drifting in turn is a new episode."""
    store = ShadowStore(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    try:
        versions = StudentVersions(store)
        versions.seed(StudentVersion(name="initial", kind="model", model_dir=str(tmp_path)))
        old = {"student_version": "initial"}
        (first,) = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(labels=old)).json()["queued"]
        wait_job(trainer, first, ("skipped",))  # no records here: it ends without training
        versions.register(StudentVersion(name="rd-1", kind="model", model_dir=str(tmp_path)))
        versions.promote("rd-1", versions.slot())  # the episode's job promoted its student
    finally:
        store.close()
    still = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(labels=old))
    late = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook(labels=old, starts="2026-12-04T10:30:00Z"))
    assert still.json() == late.json() == {"queued": [], "already": [], "ignored": 1}
    assert [job["id"] for job in call(trainer, "GET", "/v1/jobs").json()["jobs"]] == [first]
    # the new version drifting at once is still this episode (promotion_cooldown_s, 30 minutes by default)
    new = webhook(labels={"student_version": "rd-1"}, fingerprint="f2")
    assert call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=new).json() == {"queued": [], "already": [],
                                                                               "ignored": 1}
    assert [job["id"] for job in call(trainer, "GET", "/v1/jobs").json()["jobs"]] == [first]


def test_an_alert_naming_no_version_within_the_cooldown_starts_no_second_job(tmp_path):
    """The teacher-share alert carries no student_version; still firing after the episode's promotion (the share
    takes a window to fall) it started a second job (the drift e2e test caught it: job 2, an alert about no
    version). It is about the version serving now, so the cool-down holds it too."""
    _ignored_within_the_cooldown_then_queued(tmp_path, webhook(labels={"alertname": "KdgateTeacherShareHigh"},
                                                               fingerprint="f3"))


def test_a_new_version_still_drifting_after_the_cooldown_is_a_new_episode(tmp_path):
    _ignored_within_the_cooldown_then_queued(tmp_path, webhook(labels={"student_version": "rd-1"}, fingerprint="f2"))


def _ignored_within_the_cooldown_then_queued(tmp_path, alert: dict) -> None:
    """`rd-1` promoted over `initial` just now (cool-down 1 s): the alert is ignored, and queued once it is over."""
    settings, path = trainer_config(tmp_path, promotion_cooldown_s=1.0)
    store = ShadowStore(settings.store_url)
    try:
        versions = StudentVersions(store)
        versions.seed(StudentVersion(name="initial", kind="model", model_dir=str(tmp_path)))
        versions.register(StudentVersion(name="rd-1", kind="model", model_dir=str(tmp_path)))
        versions.promote("rd-1", versions.slot())
    finally:
        store.close()
    with ThreadedServer(create_trainer_app(settings, path)) as trainer:
        assert call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=alert).json()["ignored"] == 1
        time.sleep(1.2)
        assert len(call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=alert).json()["queued"]) == 1


def test_a_body_past_the_limit_is_413_before_it_is_read(trainer):
    """10 MB to the webhook were accepted; the limit is `max_body_bytes` (1 MiB), by Content-Length or streamed."""
    big = webhook() | {"padding": "x" * (2 * 1024 * 1024)}
    declared = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=big)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(20):
            yield b"x" * (128 * 1024)
    streamed = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, content=chunks(),
                    headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=webhook()).status_code == 200  # small ones pass


@pytest.mark.parametrize(("body", "field"), [
    ({"version": "3"}, "version"), (webhook() | {"alerts": [{"status": "firing"}]}, "alerts.0.labels"),
    (webhook() | {"status": "pending"}, "status"), ([], None)])
def test_a_malformed_body_is_400_naming_the_field_and_queues_nothing(trainer, body, field):
    refused = call(trainer, "POST", "/v1/alerts", ALERTS_KEY, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    assert call(trainer, "GET", "/v1/jobs").json()["jobs"] == []


def test_tokens(trainer):
    assert call(trainer, "POST", "/v1/alerts", None, json=webhook()).status_code == 401
    assert call(trainer, "POST", "/v1/alerts", "kdg-wrong", json=webhook()).status_code == 401
    assert call(trainer, "GET", "/v1/jobs", ALERTS_KEY).status_code == 403  # Alertmanager's token only delivers
    assert call(trainer, "GET", "/metrics", None).status_code == 401
    assert call(trainer, "GET", "/healthz", None).status_code == 200
    assert call(trainer, "GET", "/v1/jobs/99").status_code == 404


def test_waiting_for_a_step_fails_at_once_when_the_job_ends_first_and_at_its_deadline():
    seen = iter([{"state": "queued", "step": None}, {"state": "running", "step": "dataset"},
                 {"state": "failed", "step": "dataset", "reason": "boom"}])
    started = time.monotonic()
    with pytest.raises(AssertionError, match="ended before its 'train' step"):
        wait_step(lambda: next(seen), "train")
    with pytest.raises(AssertionError, match="did not reach its 'train' step in 0.3 s"):
        wait_step(lambda: {"state": "running", "step": "dataset"}, "train", timeout=0.3)
    assert time.monotonic() - started < 5


def test_a_running_job_is_cancelled_and_its_process_stopped(tmp_path, demo_dirs):
    settings, path = trainer_config(tmp_path, train={"threads": 1, "overrides": ["steps=100000"]})
    seed_records(settings, demo_dirs)
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        job_id = call(server, "POST", "/v1/jobs", json={"reason": "test"}).json()["id"]
        running = wait_step(lambda: call(server, "GET", f"/v1/jobs/{job_id}").json(), "train")
        pid = int(running["runner_ref"].removeprefix("pid:"))
        cancelled = call(server, "POST", f"/v1/jobs/{job_id}/cancel").json()
        ended = wait_job(server, job_id, ("cancelled",), timeout=30)
        metrics = call(server, "GET", "/metrics").text
    assert cancelled["id"] == job_id and ended["reason"] == "cancelled by request"
    assert not runs_a_job(pid)
    assert 'kdgate_trainer_jobs{state="cancelled"} 1.0' in metrics
    assert call_ended_twice(tmp_path, job_id)


def call_ended_twice(tmp_path, job_id: int) -> bool:
    """An ended job cannot be cancelled again (409)."""
    settings, path = trainer_config(tmp_path)
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        return call(server, "POST", f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_a_job_past_its_time_is_stopped_and_a_killed_one_is_failed(tmp_path, demo_dirs):
    settings, path = trainer_config(tmp_path, job_timeout_s=6.0,
                                    train={"threads": 1, "overrides": ["steps=100000"]})
    seed_records(settings, demo_dirs)
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        slow = call(server, "POST", "/v1/jobs").json()["id"]
        assert wait_job(server, slow, ("failed",), timeout=60)["reason"] == "timed out after 6 s"
        killed = call(server, "POST", "/v1/jobs").json()["id"]
        pid = int(wait_job(server, killed, ("running",))["runner_ref"].removeprefix("pid:"))
        os.kill(pid, signal.SIGKILL)
        ended = wait_job(server, killed, ("failed",), timeout=30)
    assert ended["reason"] == "the job process exited with code -9 before ending the job"


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def trainer_process(path) -> tuple[str, Callable[[], subprocess.Popen]]:
    """`kdgate trainer serve --config path` as an operator runs it, on a free port: its URL, and a function that
    starts it (again) and waits until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "kdgate.cli", "trainer", "serve", "--port", str(port), "--config", str(path)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        service = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(f"{url}/healthz", service)
        return service
    return url, start


def job_in_training(url: str) -> tuple[int, dict]:
    """A job started through the API, once it is training: its id and its row."""
    job_id = httpx.post(f"{url}/v1/jobs", headers=ADMIN_HEADERS, timeout=30).json()["id"]
    return job_id, wait_step(lambda: httpx.get(f"{url}/v1/jobs/{job_id}", headers=ADMIN_HEADERS, timeout=30).json(),
                             "train")


@pytest.mark.slow
def test_a_trainer_killed_mid_job_finds_the_job_when_it_restarts(tmp_path, demo_dirs):
    settings, path = trainer_config(tmp_path, train={"threads": 1, "overrides": ["steps=100000"]})
    seed_records(settings, demo_dirs)
    url, start = trainer_process(path)
    service = start()
    try:
        job_id, running = job_in_training(url)
        orphan = int(running["runner_ref"].removeprefix("pid:"))
        service.send_signal(signal.SIGKILL)
        service.wait()
        assert os.path.exists(f"/proc/{orphan}")  # its own session: it outlived the trainer
        service = start()
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=ADMIN_HEADERS).json()
    finally:
        stop(service)
    assert (job["state"], job["reason"]) == ("failed", "trainer restarted")
    deadline = time.monotonic() + 10
    while process_state(orphan) not in (None, "Z"):  # the restarted trainer stopped the orphan: gone, or a zombie
        assert time.monotonic() < deadline, f"the orphaned job process {orphan} still runs 10 s after the restart"
        time.sleep(0.1)
    store = ShadowStore(settings.store_url)
    assert TrainJobs(store).counts()["running"] == 0
    store.close()


@pytest.mark.parametrize(("requeue", "expected"), [
    (True, ("queued", "the trainer service stopped during the job; queued again")),
    (False, ("failed", "the trainer service stopped during the job"))])
def test_sigterm_on_the_trainer_stops_its_job_and_queues_it_again_when_configured(tmp_path, demo_dirs, requeue,
                                                                                  expected):
    """A rollout or drain sends the trainer SIGTERM: its job process is stopped (not left training on the node),
    and with `requeue_on_restart` the job is queued for the next trainer (it was failed either way)."""
    settings, path = trainer_config(tmp_path, requeue_on_restart=requeue,
                                    train={"threads": 1, "overrides": ["steps=100000"]})
    seed_records(settings, demo_dirs)
    url, start = trainer_process(path)
    service = start()
    try:
        job_id, running = job_in_training(url)
        pid = int(running["runner_ref"].removeprefix("pid:"))
        service.send_signal(signal.SIGTERM)
        exit_code = service.wait(timeout=60)
    finally:
        stop(service)
    store = ShadowStore(settings.store_url)
    job = TrainJobs(store).get(job_id)
    store.close()
    assert exit_code == -signal.SIGTERM  # uvicorn shuts down, then re-raises the signal it caught
    assert (job.state, job.reason) == expected
    assert process_state(pid) in (None, "Z")


def test_a_deleted_store_file_is_put_back_by_the_trainer_too(tmp_path):
    """The trainer's own SQLite store had a file watch that nothing polled: a `rm` of the file under a running
    trainer went unnoticed and its jobs were written into the deleted inode, lost at the next start. The trainer's
    loop now puts the file back, as the gateway's does."""
    settings, path = trainer_config(tmp_path)
    store_file = tmp_path / "store.sqlite3"
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        first = call(server, "POST", "/v1/jobs", json={"reason": "before the rm"})
        assert first.status_code in (200, 201), first.text
        store_file.unlink()
        deadline = time.monotonic() + 30
        while not store_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store_file.exists(), "the trainer did not put its store file back"
        second = call(server, "POST", "/v1/jobs", json={"reason": "after the rm"})
        assert second.status_code in (200, 201), second.text
    with ThreadedServer(create_trainer_app(settings, path)) as server:  # a restart reads the file at the path
        ids = {job["id"] for job in call(server, "GET", "/v1/jobs").json()["jobs"]}
    assert {first.json()["id"], second.json()["id"]} <= ids
