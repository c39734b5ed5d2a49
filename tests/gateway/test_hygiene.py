"""Logs and protocol hygiene, against `kdgate serve` as ops run it: nothing a client sends forges a log line, no
prompt or key text is logged, a client that leaves is not an error, and the HTTP surface answers the way a careful
server does (415, 405 with Allow, 408 for a stalled body, no CORS unless configured, no /docs unless enabled)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.logs import JsonFormatter, escape
from gateway.settings import GatewaySettings
from tests.conftest import ThreadedServer, free_port, stop, wait_until_up

MARKER_PROMPT = "MARKER-PROMPT-5521 my order 12345 is late"
MARKER_KEY = "sk-MARKERKEY-0000000000000000"
FORGED = "FORGED 2026-12-02 00:00:00,000 ERROR gateway: admin logged in"


def serve(workdir, log_format: str):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    env |= {"KDGATE_TEACHER": "null", "KDGATE_STUDENT__THREADS": "1", "KDGATE_LOG_FORMAT": log_format,
            "KDGATE_BODY_READ_TIMEOUT_S": "2", "PYTHONUNBUFFERED": "1"}
    log = (workdir / f"serve-{log_format}.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
    return process, f"http://127.0.0.1:{port}", workdir / f"serve-{log_format}.log"


def hostile_traffic(url: str) -> None:
    body = {"messages": [{"role": "user", "content": MARKER_PROMPT}], "max_tokens": 8}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MARKER_KEY}"},
                       timeout=60)
    assert reply.status_code == 200, reply.text
    httpx.get(f"{url}/no/such%0a{FORGED.replace(' ', '%20')}", timeout=10)  # the path is logged by the access log
    stream = {"messages": [{"role": "user", "content": MARKER_PROMPT}], "max_tokens": 300, "ignore_eos": True,
              "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=stream, timeout=30) as response:
        lines = response.iter_lines()
        next(lines), next(lines)  # the client leaves mid-answer
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as slow:  # leaves mid-body
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"mess")
        time.sleep(0.5)  # a stalled client, which then leaves


# The access-log lines the four requests above must leave, in order: the server saw each of them through.
ACCESS_LINES = [r"POST /v1/chat/completions 200 ", r"GET /no/such.* 404 ", r"POST /v1/chat/completions 200 ",
                r"POST /v1/chat/completions (499|408) "]  # the mid-body leave: 499, or 408 had it stalled on


def access_lines(text: str) -> list[str]:
    """The access-log lines of the traffic, without those of the test's own scrapes of /metrics."""
    return [line for line in text.splitlines() if "gateway.access" in line and "GET /metrics " not in line]


def cancelled_streams(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == "kdgate_requests_total" and sample.labels["outcome"] == "cancelled"
               and sample.labels["stream"] == "true")


def wait_for_evidence(url: str, log) -> float:
    """Wait (30 s at most) until the server has logged all four requests and counted the abandoned stream as
    cancelled, so that what the absences are asserted over includes their whole handling; the cancelled count."""
    deadline = time.monotonic() + 30
    while True:
        seen, cancelled = access_lines(log.read_text()), cancelled_streams(url)
        if len(seen) >= len(ACCESS_LINES) and cancelled >= 1:
            return cancelled
        assert time.monotonic() < deadline, f"the server logged {seen} and counted {cancelled} cancelled streams"
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["text", "json"])
def served_logs(request, tmp_path_factory):
    process, url, log = serve(tmp_path_factory.mktemp("logs"), request.param)
    try:
        hostile_traffic(url)
        cancelled = wait_for_evidence(url, log)
    finally:
        stop(process)
    return request.param, log.read_text(), cancelled


def test_no_client_text_starts_a_log_line(served_logs):
    log_format, text, _ = served_logs
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    assert "FORGED" in text  # it was logged, escaped, inside its own line
    if log_format == "json":  # inside one record's message, escaped
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any("FORGED" in record["message"] for record in records)


def test_no_prompt_or_key_text_is_logged(served_logs):
    _, text, _ = served_logs
    assert len(access_lines(text)) == len(ACCESS_LINES)  # the requests carrying the markers were served and logged
    assert "MARKER-PROMPT" not in text and "MARKERKEY" not in text


def test_a_client_that_leaves_is_not_an_error(served_logs):
    _, text, cancelled = served_logs
    lines = access_lines(text)
    assert len(lines) == len(ACCESS_LINES) and all(re.search(pattern, line)
                                                   for pattern, line in zip(ACCESS_LINES, lines, strict=True)), lines
    assert cancelled == 1  # the stream the client left mid-answer was seen to end as cancelled
    assert "Traceback" not in text and "ClientDisconnect" not in text
    assert [line for line in text.splitlines() if _level(line) in ("ERROR", "CRITICAL")] == []


def _level(line: str) -> str | None:
    if line.startswith("{"):
        return json.loads(line)["level"].upper()
    words = line.split()
    return words[2] if len(words) > 2 and words[0][:2] == "20" else None


@pytest.fixture(scope="module")
def gateway_app(demo_dirs):
    def start(**settings):
        return ThreadedServer(create_app(GatewaySettings(teacher=None, shadow={"enabled": False},
                                                         student={"threads": 1}, **settings)))
    return start


def test_a_body_that_is_not_json_gets_415(gateway):
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", content=b'{"messages": []}', timeout=10,
                       headers={"content-type": "text/plain"})  # a browser's cross-origin "simple" request
    assert reply.status_code == 415 and "content-type" in reply.json()["error"]["message"]


def test_a_wrong_method_gets_405_with_allow(gateway):
    reply = httpx.get(f"{gateway.url}/v1/chat/completions", timeout=10)
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_a_stalled_body_gets_408(gateway_app):
    with gateway_app(body_read_timeout_s=1.0) as server, socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"mess")
        s.settimeout(10)
        started = time.monotonic()
        head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 408") and time.monotonic() - started < 5


def test_no_cors_and_no_docs_unless_configured(gateway, gateway_app):
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{gateway.url}/v1/chat/completions",
                                                              headers=preflight, timeout=10).headers
    assert httpx.get(f"{gateway.url}/docs", timeout=10).status_code == 404
    assert httpx.get(f"{gateway.url}/openapi.json", timeout=10).status_code == 200
    with gateway_app(cors_allow_origins=["https://app.example"], docs_enabled=True) as server:
        allowed = httpx.options(f"{server.url}/v1/chat/completions", timeout=10,
                                headers=preflight | {"origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200


def test_every_openapi_ref_resolves_and_errors_are_documented(gateway):
    doc = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "408", "413", "415", "429", "503", "504"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")


def test_a_json_record_is_one_line_and_text_escapes_control_characters():
    record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "fields: %s", (f"x\n{FORGED}",), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["message"] == f"fields: x\n{FORGED}"
    assert escape("a\nb\x1b[31m") == "a\\nb\\x1b[31m"


def test_every_error_code_is_a_string_or_null_as_openais(gateway):
    """OpenAI's `error.code` is a string or null (`model_not_found`, `rate_limit_exceeded`); the gateway sent the
    integer status for every error without a named reason (404 route, 405, 400 body, 415, invalid request)."""
    url = f"{gateway.url}/v1/chat/completions"
    replies = [httpx.get(f"{gateway.url}/v1/nowhere", timeout=10), httpx.get(url, timeout=10),
               httpx.post(url, content=b"{}", headers={"content-type": "text/plain"}, timeout=10),
               httpx.post(url, json={"model": "kdgate-demo", "messages": [{"role": "user", "content": "hi"}], "n": 2},
                          timeout=10),
               httpx.post(url, json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, timeout=10),
               httpx.post(f"{gateway.url}/admin/v1/students", json={"name": 5}, timeout=10)]
    for reply in replies:
        assert reply.status_code >= 400, reply.text
        code = reply.json()["error"]["code"]
        assert code is None or isinstance(code, str), (reply.request.url, reply.json())
    assert replies[4].json()["error"]["code"] == "model_not_found"
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()["components"]["schemas"]["ErrorBody"]
    assert {option.get("type") for option in schema["properties"]["code"]["anyOf"]} == {"string", "null"}
