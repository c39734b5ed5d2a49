"""`kdgate serve` with no configuration at all, as a newcomer starts it: the README's quick-start requests get the
answers the README promises — an easy ticket from the student, a hard one handed off to the teacher mid-answer —
and the banner says which policy is active and how to change it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from distill.demo import task
from tests.conftest import ROOT, free_port, stop, wait_until_up

HELD_OUT_TICKETS = 300  # the README's tickets come from the first tickets of the demo's `test` split


def quick_start_requests() -> list[dict]:
    """The JSON bodies of the README's quick-start curl commands, in order."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [json.loads(body) for body in re.findall(r"-d '(\{.*?\})'", quick_start, flags=re.DOTALL)]


def held_out_ticket(text: str) -> task.Ticket:
    for ticket in task.take("test", HELD_OUT_TICKETS):
        if ticket.text == text:
            return ticket
    raise AssertionError(f"the README's ticket is not among the first {HELD_OUT_TICKETS} held-out tickets: {text}")


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory):
    """The gateway as `./dev serve` starts it: no KDGATE_ setting, no file; its store goes to a scratch folder."""
    workdir = tmp_path_factory.mktemp("default-serve")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    log = (workdir / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                               env=env | {"PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
    wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
    yield f"http://127.0.0.1:{port}", workdir / "serve.log"
    stop(process)
    log.close()


def test_the_readme_shows_an_easy_and_a_hard_ticket():
    easy, hard = quick_start_requests()
    for body in (easy, hard):
        held_out_ticket(body["messages"][0]["content"])
        assert body["temperature"] == 0


def test_an_easy_ticket_is_served_by_the_student(default_gateway):
    url, _ = default_gateway
    body = quick_start_requests()[0]
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-kdgate-route"] == "student"
    assert reply.headers["x-kdgate-student-version"] == "initial"  # the store's first version, as the README shows
    answer = reply.json()["choices"][0]["message"]["content"]
    assert answer == held_out_ticket(body["messages"][0]["content"]).answer_json()


def test_a_hard_ticket_is_handed_off_to_the_teacher_by_default(default_gateway):
    url, _ = default_gateway
    body = quick_start_requests()[1]
    ticket = held_out_ticket(body["messages"][0]["content"])
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert (reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]) == ("teacher", "handoff")
    assert reply.json()["kdgate"]["reason"] == "handoff"
    assert reply.json()["choices"][0]["message"]["content"] == ticket.answer_json()
    alone = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-kdgate-force": "student"}, timeout=60)
    assert alone.json()["choices"][0]["message"]["content"] != ticket.answer_json()  # hard: the student errs


def test_the_banner_names_the_policy_its_threshold_and_how_to_change_it(default_gateway):
    _, log = default_gateway
    routing = next(line for line in log.read_text().splitlines() if line.startswith("routing: "))
    assert "mid-stream handoff" in routing and "p=0.9" in routing
    assert "KDGATE_ROUTING__HANDOFF__ENABLED=false" in routing and "docs/routing.md" in routing
    shadow = next(line for line in log.read_text().splitlines() if line.startswith("shadow: "))
    assert "5%" in shadow and "sqlite:///var/kdgate-demo.sqlite3" in shadow  # the demo deployment's own store


def test_an_idle_connection_outlives_a_clients_own_keep_alive(default_gateway):
    """uvicorn closed idle connections after 5 s, the same expiry as httpx's and the openai SDK's pools: a client
    reusing a connection just as the gateway closed it got a ReadError (one in 12,000 requests of the soak run).
    The gateway now keeps idle connections for `limits.keep_alive_s` (75 s)."""
    import socket
    import time

    url, _ = default_gateway
    port = int(url.rsplit(":", 1)[1])
    request = b"GET /healthz HTTP/1.1\r\nHost: kdgate\r\n\r\n"
    def response(connection) -> bytes:  # headers and body may come in separate reads: read the whole answer
        received = b""
        while not received.endswith(b'{"status":"ok"}'):
            chunk = connection.recv(4096)
            assert chunk, f"the gateway closed the connection after {received!r}"
            received += chunk
        return received

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        assert response(connection).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)  # past httpx's 5 s keep-alive expiry, and uvicorn's old default
        connection.sendall(request)
        assert response(connection).startswith(b"HTTP/1.1 200")
