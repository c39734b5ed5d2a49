"""A PostgreSQL store outage while the gateway serves: requests are answered, offered shadow jobs are held and
stored once the store is back (they were dropped on the first failed write), and the outage is logged once when it
starts and once when it ends (the student-slot poller logged a traceback every poll)."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distill.demo import task
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from runtime.store.records import ShadowStore
from tests.conftest import ThreadedServer, gateway_settings

pytestmark = pytest.mark.slow
REQUESTS = 12


def dropped(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "kdgate_shadow_dropped_total")


def test_jobs_offered_during_a_store_outage_are_stored_after_it_and_it_is_logged_once(
        demo_dirs, engine_server, postgres_cluster, caplog):
    from gateway.app import create_app

    settings = gateway_settings(
        demo_dirs, engine_server, routing=RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=False)),
        shadow=ShadowSettings(sample_rate=1.0, store_url=postgres_cluster.url, timeout_s=20),
        students=StudentsSettings(enabled=True, poll_interval_s=0.2))
    with ThreadedServer(create_app(settings)) as gateway:
        caplog.set_level(logging.INFO)
        postgres_cluster.stop()
        for ticket in task.take("test", REQUESTS, seed=3):  # answered while the store is down
            body = {"messages": ticket.messages(), "max_tokens": 8, "temperature": 0}
            assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        time.sleep(3)  # 15 polls of the slot, and several tries to store the jobs, all failing
        postgres_cluster.start()
        store = ShadowStore(postgres_cluster.url)
        deadline = time.monotonic() + 120
        while store.count() < REQUESTS and time.monotonic() < deadline:
            time.sleep(0.5)
        stored = store.count()
        store.close()
        time.sleep(1)  # a poll after the store is back says so
        assert dropped(gateway.url) == 0
    assert stored == REQUESTS
    by_message = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    slot = [message for message in by_message if message.startswith("following the student slot")]
    assert len(slot) == 2 and "failed" in slot[0] and "works again" in slot[1], slot
    storing = [message for message in by_message if message.startswith("storing offered shadow jobs")]
    assert len(storing) == 2 and "works again" in storing[1], storing
