"""Server-sent events helpers shared by the HTTP backend and the load generator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from httpx_sse import SSEError

DRAIN_TIMEOUT_S = 0.05


async def drain(events: AsyncIterator) -> None:
    """Read what follows `[DONE]` (normally only the end of the chunked body), so that the connection goes back to
    the pool: closing a response that was not read to its end closes its connection, and the next request pays a
    new TCP handshake. A server that keeps the stream open after `[DONE]` loses the connection after 50 ms."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError, SSEError):
        pass
