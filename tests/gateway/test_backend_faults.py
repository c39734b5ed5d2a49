"""A teacher whose server dies: mid-stream error event then [DONE], then 503s and /readyz naming the backend."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import ThreadedServer, gateway_settings, start_engine_server, stop

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"


@pytest.fixture(scope="module")
def doomed(demo_dirs):
    """A gateway whose teacher is an engine server this module kills."""
    engine = start_engine_server(demo_dirs[1], "demo-teacher")
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine))) as server:
        yield server, engine
    stop(engine.process)


def test_teacher_dying_mid_stream_gives_one_error_event_then_done(doomed):
    server, engine = doomed
    body = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"x-kdgate-force": "teacher"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        engine.process.kill()
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    errors = [json.loads(line.removeprefix("data: ")) for line in rest if '"error"' in line]
    assert len(errors) == 1 and errors[0]["error"]["type"] in ("upstream_error", "invalid_request_error")
    assert "teacher" in errors[0]["error"]["message"]


def test_dead_teacher_gives_503_and_readyz_names_it(doomed):
    server, engine = doomed
    engine.process.kill()
    engine.process.wait()
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, headers={"x-kdgate-force": "teacher"},
                          json={"messages": [{"role": "user", "content": TICKET}], "max_tokens": 4})
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]["message"]
    readiness = httpx.get(f"{server.url}/readyz", timeout=30)
    assert readiness.status_code == 503
    report = readiness.json()["backends"]
    assert report["student"]["ready"] is True and report["teacher"]["ready"] is False
    assert "unreachable" in report["teacher"]["error"]
    # The student keeps serving.
    ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                    json={"messages": [{"role": "user", "content": TICKET}], "max_tokens": 4})
    assert ok.status_code == 200
