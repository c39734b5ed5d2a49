"""`kdgate serve` refuses what would stop it, in one plain line and before anything loads: a busy port (it used to be
reported after the banner and 12 s of model loading) and a record store whose active student version this
configuration cannot serve (the gateway used to load, then exit 3 with a traceback in one ERROR line). And the
trap that second refusal guards is closed at its source: with `shadow.store_url` unset, each deployment gets its own
store, so a gateway started after `./dev serve` in the same folder no longer reads the demo's."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import yaml

from gateway.settings import GatewaySettings, ShadowSettings
from gateway.students.loader import initial_version
from runtime.store.records import ShadowStore
from runtime.store.versions import StudentVersions
from tests.conftest import free_port

HTTP_STUDENT = {"kind": "http", "base_url": "http://127.0.0.1:9/v1", "model": "student"}
HTTP_TEACHER = {"kind": "http", "base_url": "http://127.0.0.1:9/v1", "model": "teacher"}


def serve(workdir, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "serve", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def seed_demo_store(workdir) -> None:
    """What `./dev serve` leaves in its folder: the demo's store, its active version the local demo student."""
    os.chdir(workdir)
    settings = GatewaySettings()
    store = ShadowStore(settings.shadow.store_url)
    StudentVersions(store).seed(initial_version(settings))
    store.close()


def test_a_busy_port_is_one_line_before_the_banner(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done, took = serve(tmp_path, "--port", str(port))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"kdgate: port {port} on 127.0.0.1 is already in use (another kdgate? `ss -ltnp 'sport = :{port}'` names "
        "it); stop it, or pick another port with --port or KDGATE_PORT"]
    assert "kdgate gateway on" not in done.stdout  # no banner, no model loaded
    assert not (tmp_path / "var").exists()  # nor the store opened
    assert took < 30


def test_a_store_of_another_deployment_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_demo_store(tmp_path)
    config = tmp_path / "http.yaml"
    config.write_text(yaml.safe_dump({"student": HTTP_STUDENT, "teacher": HTTP_TEACHER,
                                      "shadow": {"store_url": "sqlite:///var/kdgate-demo.sqlite3"}}))
    done, _ = serve(tmp_path, "--config", str(config), "--port", str(free_port()))
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kdgate: the record store sqlite:///var/kdgate-demo.sqlite3 holds student version "
                           "`initial` as the active one, which this gateway cannot serve: it is a model folder")
    assert "`shadow.store_url` (KDGATE_SHADOW__STORE_URL)" in line and "`kdgate student`" in line
    assert "kdgate gateway on" not in done.stdout


def test_each_deployment_gets_its_own_store_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = GatewaySettings()
    assert demo.shadow.store_url == "sqlite:///var/kdgate-demo.sqlite3"
    http = GatewaySettings(student=HTTP_STUDENT, teacher=HTTP_TEACHER)
    again = GatewaySettings(student=HTTP_STUDENT, teacher=HTTP_TEACHER)
    other = GatewaySettings(student=HTTP_STUDENT | {"base_url": "http://127.0.0.1:10/v1"}, teacher=HTTP_TEACHER)
    assert http.shadow.store_url == again.shadow.store_url  # the same store at every restart
    assert len({demo.shadow.store_url, http.shadow.store_url, other.shadow.store_url}) == 3
    assert http.shadow.store_url.startswith("sqlite:///var/kdgate-") and http.shadow.store_url.endswith(".sqlite3")
    given = GatewaySettings(student=HTTP_STUDENT, teacher=HTTP_TEACHER,
                            shadow=ShadowSettings(store_url="sqlite:///var/mine.sqlite3"))
    assert given.shadow.store_url == "sqlite:///var/mine.sqlite3"
    assert GatewaySettings(shadow=ShadowSettings(store_url=None)).shadow.store_url is None  # null: metrics only
    monkeypatch.setenv("KDGATE_SHADOW__STORE_URL", "null")
    assert GatewaySettings().shadow.store_url is None


def test_a_gateway_after_the_demo_in_the_same_folder_starts(tmp_path, monkeypatch):
    """The trap itself: `./dev serve`, then a gateway with HTTP backends from the same folder (the overhead
    benchmark's arms) — its own store, nothing to refuse."""
    from gateway.preflight import store_problem

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGATE_STUDENTS__ENABLED", "true")  # tests/conftest.py turns versions off by default
    seed_demo_store(tmp_path)
    http = GatewaySettings(student=HTTP_STUDENT, teacher=HTTP_TEACHER)
    assert store_problem(http) is None
    shared = GatewaySettings(student=HTTP_STUDENT, teacher=HTTP_TEACHER,
                             shadow=ShadowSettings(store_url="sqlite:///var/kdgate-demo.sqlite3"))
    assert "which this gateway cannot serve" in store_problem(shared)


@pytest.mark.parametrize("left_behind", [True, False])
def test_the_banner_names_the_store_and_a_former_default_left_behind(tmp_path, monkeypatch, left_behind):
    from gateway.banner import banner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGATE_STUDENTS__ENABLED", "true")
    if left_behind:
        (tmp_path / "var").mkdir()
        (tmp_path / "var" / "kdgate-shadow.sqlite3").write_bytes(b"")
    lines = banner(GatewaySettings())
    students = next(line for line in lines if line.startswith("students: "))
    assert "sqlite:///var/kdgate-demo.sqlite3" in students
    notes = [line for line in lines if line.startswith("note: ")]
    assert notes == (["note: var/kdgate-shadow.sqlite3 (the shared default store before each deployment had its "
                      "own) is no longer used by default; to keep its records and student versions, set "
                      "shadow.store_url: sqlite:///var/kdgate-shadow.sqlite3"] if left_behind else [])


@pytest.mark.slow
def test_ctrl_c_says_what_it_waits_for_and_exits_cleanly(tmp_path):
    """Ctrl-C with shadow jobs still to do: the wait is named (it used to be up to 15 s of silence), the process
    ends with code 0 once the lifespan has closed everything, and every shutdown line reached the log."""
    import signal
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import httpx

    from tests.conftest import wait_until_up

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")} | {
        "KDGATE_SHADOW__SAMPLE_RATE": "1", "KDGATE_SHADOW__CONCURRENCY": "1", "KDGATE_SHADOW__DRAIN_TIMEOUT_S": "3",
        "KDGATE_ROUTING__HANDOFF__ENABLED": "false",  # the student answers, so each answer is a shadow job
        "KDGATE_STUDENT__THREADS": "1", "KDGATE_TEACHER__THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=tmp_path,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
            texts = ["Hi, my order 12345 of a StreamPlus never arrived.", "The TaskPilot app crashes on start.",
                     "Please cancel order 55555.", "My SmartHub Pro is broken, order 77777.",
                     "Order 24680: the StreamPlus remote is missing.", "I was charged twice for order 13579."]

            def ask(text: str) -> int:
                return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                    "model": "kdgate-demo", "messages": [{"role": "user", "content": text}], "temperature": 0,
                    "max_tokens": 48}).status_code

            with ThreadPoolExecutor(len(texts)) as pool:  # Ctrl-C while answers are in flight: their shadow jobs
                answers = [pool.submit(ask, text) for text in texts]  # are still to do when the lifespan ends
                next(as_completed(answers))
                process.send_signal(signal.SIGINT)
            assert [answer.result() for answer in answers] == [200] * len(texts)  # in-flight answers finish
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert re.search(r"shutting down: finishing \d+ shadow jobs? first, for at most 3 s \(shadow.drain_timeout_s\)",
                     text), text[-2000:]
    assert "Finished server process" in text  # the log was flushed before the fast exit
