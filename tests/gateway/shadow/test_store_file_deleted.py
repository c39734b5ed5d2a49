"""The SQLite store's file deleted while the gateway serves (`rm var/kdgate-shadow.sqlite3`): the gateway notices,
says so in an ERROR line and a counter, and puts the database back at its path with everything written before and
after; a restart finds every record (it found none: 233 acknowledged jobs had gone into the unlinked file)."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from distill.demo import task
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from runtime.store.records import ShadowStore
from tests.conftest import ThreadedServer, gateway_settings

pytestmark = pytest.mark.slow
BEFORE, AFTER = 6, 6


def ask(url: str, tickets) -> None:
    for ticket in tickets:
        body = {"messages": ticket.messages(), "max_tokens": 8, "temperature": 0}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def records_in(path) -> int:
    store = ShadowStore(f"sqlite:///{path}")
    try:
        return store.count()
    finally:
        store.close()


def test_a_store_file_deleted_while_serving_is_put_back_with_everything(demo_dirs, engine_server, tmp_path, caplog):
    from gateway.app import create_app

    path = tmp_path / "shadow.sqlite3"
    settings = gateway_settings(demo_dirs, engine_server, routing=RoutingSettings(
        policy="student_only", handoff=HandoffSettings(enabled=False)), shadow=ShadowSettings(
        sample_rate=1.0, store_url=f"sqlite:///{path}", timeout_s=20),
        students=StudentsSettings(enabled=True, poll_interval_s=0.2))  # a second store on the same file
    tickets = task.take("test", BEFORE + AFTER, seed=9)
    with ThreadedServer(create_app(settings)) as gateway:
        worker = gateway.app.state.chat.shadow
        ask(gateway.url, tickets[:BEFORE])
        deadline = time.monotonic() + 60
        while worker.store.count() < BEFORE and time.monotonic() < deadline:
            time.sleep(0.2)
        caplog.set_level(logging.ERROR, logger="gateway.shadow.worker")
        path.unlink()  # what an operator's `rm` does; the -wal and -shm names stay
        ask(gateway.url, tickets[BEFORE:])
        deadline = time.monotonic() + 60
        while (not path.exists() or worker.store.count() < BEFORE + AFTER) and time.monotonic() < deadline:
            time.sleep(0.2)
        restored = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        time.sleep(1)  # the slot poller's store finds the file put back and follows it
        slot = httpx.get(f"{gateway.url}/admin/v1/students/status", timeout=10).json()
    assert "kdgate_store_file_restored_total 1.0" in restored
    assert any("was deleted, and put back with everything written to it" in record.getMessage()
               for record in caplog.records)
    assert records_in(path) == BEFORE + AFTER  # what a restart reads from the path
    assert slot["active"] == "initial" and not list(path.parent.glob("*.replaced-*"))  # followed, not overwritten
