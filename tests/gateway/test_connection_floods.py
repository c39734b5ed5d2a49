"""`kdgate serve` as ops run it, with its default connection limits, under the two floods the hostile probe used:
4,096 idle sockets opened without any key (a keyed client is still served, and the gateway stays up), and two
requests of 300 MB of headers (each gets 431 after 64 KiB, and the gateway's memory does not grow)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time

import pytest
from openai import OpenAI

from tests.conftest import free_port, stop, wait_until_up

KEY = "kdg-flood-test-key"
IDLE_SOCKETS = 4096


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_SOCKETS + 512:  # this process holds the client ends; the gateway inherits the limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * IDLE_SOCKETS), hard))
    workdir = tmp_path_factory.mktemp("floods")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    env |= {"KDGATE_TEACHER": "null", "KDGATE_STUDENT__THREADS": "1", "PYTHONUNBUFFERED": "1",
            "KDGATE_SHADOW__ENABLED": "false",
            "KDGATE_AUTH__KEYS": json.dumps([{"name": "app", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}])}
    with (workdir / "serve.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process, timeout=120)
    yield process, port
    stop(process)


def ask(port: int) -> str:
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
    answer = client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": "my order "
                                            "12345 is late"}], max_tokens=8, temperature=0)
    return answer.choices[0].finish_reason


def test_4096_idle_sockets_do_not_stop_a_keyed_client(gateway):
    process, port = gateway
    idle = []
    try:
        for _ in range(IDLE_SOCKETS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)  # the gateway has accepted them all by now (or closed the longest idle for newer ones)
        started = time.monotonic()
        assert ask(port) in ("stop", "length")
        assert time.monotonic() - started < 30
        assert process.poll() is None
    finally:
        for sock in idle:
            sock.close()
    assert ask(port) in ("stop", "length")


def send_huge_headers(port: int, total: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        line = b"x-flood: " + b"a" * (1 << 20) + b"\r\n"
        sent = 0
        try:
            while sent < total:
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def test_300_mb_of_headers_get_431_and_leave_no_memory_behind(gateway):
    process, port = gateway
    ask(port)  # warm: the first answer allocates what every later one reuses
    before = rss_bytes(process.pid)
    for _ in range(2):
        reply = send_huge_headers(port, 300 * 1024 * 1024)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert ask(port) in ("stop", "length")
    grown = rss_bytes(process.pid) - before
    assert grown < 32 * 1024 * 1024, f"the gateway grew by {grown / 2**20:.0f} MiB"
