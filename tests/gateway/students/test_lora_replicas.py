"""Finding the student replicas by DNS (`student.replicas_from_dns`): a headless Service's name resolves to every
ready pod, and each address becomes a replica URL with the Service's port and path."""

from __future__ import annotations

import socket

from gateway.students.lora import replica_addresses


async def test_a_name_becomes_one_url_per_address():
    expected = sorted({info[4][0] for info in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)})
    urls = await replica_addresses("http://localhost:8001/v1")
    assert urls == [f"http://[{address}]:8001/v1" if ":" in address else f"http://{address}:8001/v1"
                    for address in expected]
    assert "http://127.0.0.1:8001/v1" in urls


async def test_an_address_stays_itself_and_a_name_that_does_not_resolve_is_kept():
    assert await replica_addresses("http://127.0.0.1:9/v1") == ["http://127.0.0.1:9/v1"]
    assert await replica_addresses("http://no-such-host.invalid:8000/v1") == ["http://no-such-host.invalid:8000/v1"]
