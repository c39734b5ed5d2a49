"""Finding the student replicas by DNS (`student.replicas_from_dns`): a headless Service's name resolves to every
ready pod, and each address becomes a replica URL with the Service's port and path."""

from __future__ import annotations

import logging
import socket

import httpx

from gateway.students.lora import LoraReplicas, replica_addresses


async def test_a_name_becomes_one_url_per_address():
    expected = sorted({info[4][0] for info in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)})
    urls = await replica_addresses("http://localhost:8001/v1")
    assert urls == [f"http://[{address}]:8001/v1" if ":" in address else f"http://{address}:8001/v1"
                    for address in expected]
    assert "http://127.0.0.1:8001/v1" in urls


async def test_an_address_stays_itself_and_a_name_that_does_not_resolve_is_kept():
    assert await replica_addresses("http://127.0.0.1:9/v1") == ["http://127.0.0.1:9/v1"]
    assert await replica_addresses("http://no-such-host.invalid:8000/v1") == ["http://no-such-host.invalid:8000/v1"]


async def test_a_replica_that_is_not_up_yet_is_left_for_the_next_round_without_a_warning(caplog, engine_server):
    """The headless Service lists starting pods too (the chart publishes not-ready addresses, so adapters go on
    before readiness): a replica whose server does not answer yet is skipped quietly, every reconcile interval,
    while a replica that answers still gets the adapter tried (here it refuses: no runtime LoRA, a warning)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    closed.close()
    async with httpx.AsyncClient(timeout=10) as client:
        replicas = LoraReplicas(client, [down, engine_server.base_url])
        with caplog.at_level(logging.WARNING, logger="gateway.students.lora"):
            loaded = await replicas.reconcile({"demo-student@v9": "/nowhere"})
    assert loaded == []
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and engine_server.base_url in warned[0] and down not in warned[0]
