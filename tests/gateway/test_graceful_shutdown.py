"""SIGTERM under streaming load (a rollout, a scale-in, a node drain): the gateway stops accepting connections and
lets every stream in flight finish, within `drain_timeout_s`, then exits cleanly; its shadow work is in the store.
With uvicorn's 5 s graceful window of before, streams longer than that were cut at shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from distill.demo import task
from gateway.shadow.jobs import JobQueue
from runtime.store.records import ShadowStore
from tests.conftest import stop
from tests.gateway.shadow.test_durability import serve

pytestmark = pytest.mark.slow
STREAMS = 32
TOKENS = 400  # together they outlive the old 5 s window (32 streams at once on the demo student)


def stream(url: str, ticket, started: list, ended: list) -> tuple[int, str | None, bool]:
    """(completion tokens, finish reason, whether it ended with [DONE]) of one long stream; `started` gets the time
    its second chunk came."""
    body = {"messages": ticket.messages(), "max_tokens": TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0}
    chunks, tokens, finish, done = 0, 0, None, False
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                chunks += 1
                if chunks == 2:
                    started.append(time.monotonic())
                finish = next((choice["finish_reason"] for choice in chunk["choices"] if choice["finish_reason"]),
                              finish)
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    ended.append(time.monotonic())
    return tokens, finish, done


def test_sigterm_lets_every_stream_finish_and_refuses_new_connections(tmp_path):
    store_url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    # at info, the log says what the shutdown waits on (uvicorn's connections and tasks, the shadow drain): a CI
    # run once saw the gateway still up 120 s after every stream had ended; the log named the shadow worker's
    # cancel, lost under Python 3.11's asyncio.wait_for (tests/gateway/shadow/test_cancel.py)
    process, url = serve(tmp_path, store_url, KDGATE_DRAIN_TIMEOUT_S="120",
                         KDGATE_ROUTING__HANDOFF__ENABLED="false", KDGATE_LOG_LEVEL="info")
    port = int(url.rsplit(":", 1)[1])
    started: list[float] = []
    ended: list[float] = []
    try:
        with ThreadPoolExecutor(STREAMS) as pool:
            results = [pool.submit(stream, url, ticket, started, ended)
                       for ticket in task.take("test", STREAMS, seed=4)]
            deadline = time.monotonic() + 60
            while len(started) < STREAMS and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(started) == STREAMS, "the streams did not all start"
            signalled = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(OSError):  # the listener is closed: a load balancer's retry goes to another pod
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            outcomes = [future.result() for future in results]
        assert outcomes == [(TOKENS, "length", True)] * STREAMS, outcomes  # none cut: every token, [DONE]
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway was still up 120 s after every stream had ended; the end of its log:\n"
                        + (tmp_path / "gateway.log").read_text()[-4000:])
        assert code == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        assert max(ended) - signalled > 6, f"the last stream ended {max(ended) - signalled:.1f} s after the signal: " \
            "too soon to show the drain"
    finally:
        stop(process)
    store = ShadowStore(store_url)
    try:  # the shadow work of the drained answers is stored: as records, or as jobs the next start completes
        stored = len(list(store.iter_records())) + JobQueue(store).pending()
    finally:
        store.close()
    assert stored == STREAMS
