"""Connection-level limits (runtime/connections.py) on the real gateway app served by the guarded protocol, over
raw sockets: idle and trickling connections are closed, oversized headers get 431 before more is read, an early
answer ends its connection, and at the connection cap idle sockets give way to a client with something to say."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from runtime.connections import ConnectionLimits
from tests.conftest import ThreadedServer

LIMITS = ConnectionLimits(idle_timeout_s=1.5, header_timeout_s=1.0, max_header_bytes=8192, max_connections=8)


@pytest.fixture(scope="module")
def server(demo_dirs):
    settings = GatewaySettings(teacher=None, shadow={"enabled": False}, student={"threads": 1},
                               body_read_timeout_s=1.0)
    with ThreadedServer(create_app(settings), limits=LIMITS) as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def refusal(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(server):
    with connect(server) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # closed quietly: there was no request to answer
        assert LIMITS.idle_timeout_s - 0.2 < time.monotonic() - started < LIMITS.idle_timeout_s + 5


def test_headers_trickled_a_line_at_a_time_get_408_at_the_header_deadline(server):
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for number in range(20):
                time.sleep(0.3)
                sock.sendall(f"x-trickle-{number}: y\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = refusal(read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["code"] == "request_timeout" and "headers did not arrive" in body["error"]["message"]
    assert time.monotonic() - started < LIMITS.header_timeout_s + 5


def test_headers_over_the_limit_get_431_before_more_is_read(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 50 * 1024 * 1024:  # the server stops reading long before this
                sock.sendall(b"x-big: " + b"a" * 4096 + b"\r\n")
                sent += 4105
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = refusal(read_until_closed(sock))
    assert status == 431 and headers["connection"] == "close"
    assert str(LIMITS.max_header_bytes) in body["error"]["message"]
    assert sent < 50 * 1024 * 1024  # refused and closed, not read to the end


def test_headers_under_the_limit_are_served(server):
    reply = httpx.get(f"{server.url}/healthz", headers={"x-padding": "a" * (LIMITS.max_header_bytes - 1024)},
                      timeout=10)
    assert reply.status_code == 200


def test_an_answer_sent_before_the_body_arrived_ends_the_connection(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"mess")
        started = time.monotonic()
        raw = read_until_closed(sock)  # returns only when the server closes
    assert raw.startswith(b"HTTP/1.1 408") and b"\r\nconnection: close\r\n" in raw.lower()
    assert time.monotonic() - started < LIMITS.idle_timeout_s  # closed with the answer, not by the idle timer


def test_at_the_cap_idle_connections_give_way_to_a_client_with_a_request(server):
    idle = [connect(server) for _ in range(2 * LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        for _ in range(3):
            assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= LIMITS.max_connections  # the longest-idle gave way, no newcomer was refused
    finally:
        for sock in idle:
            sock.close()


def test_at_the_cap_with_none_idle_a_newcomer_gets_503_with_retry_after(server):
    busy = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        for sock in busy:  # each has begun a request: none is idle
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        with connect(server) as newcomer:
            newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = refusal(read_until_closed(newcomer))
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["code"] == "too_many_connections"
    finally:
        for sock in busy:
            sock.close()


def test_an_http_1_0_client_gets_its_stream_unchunked_and_the_connection_closed(server):
    with connect(server) as sock:
        body = json.dumps({"messages": [{"role": "user", "content": "my order 12345 is late"}], "max_tokens": 8,
                           "stream": True}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        raw = read_until_closed(sock)  # the end of the body is the end of the connection
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    frames = [line for line in payload.decode().split("\n") if line]
    assert frames[0].startswith("data: {") and frames[-1] == "data: [DONE]"  # SSE frames, no chunk sizes between
