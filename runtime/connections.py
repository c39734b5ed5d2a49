"""Connection-level limits for every HTTP server the project runs (the gateway, `kdgate engine`, the trainer).

uvicorn bounds what an application sees, not what a connection may hold: a socket that sends nothing, or trickles
its headers a line every few seconds, was kept for as long as it liked; headers had no size limit (300 MB of them
were buffered whole); a connection that got an error while its body was still arriving stayed open; and at the
connection cap every newcomer got a plain-text 503 while idle sockets kept their places. `GuardedHttpToolsProtocol`
is uvicorn's httptools protocol with these limits (`ConnectionLimits`, defaults below):

- an idle connection (no request yet, or between requests) is closed after `idle_timeout_s` (keep-alive);
- a request's line and headers must arrive whole within `header_timeout_s` of its first byte, else 408 and close;
- they may not exceed `max_header_bytes`, else 431 and close, before more is buffered;
- a response sent before its request's body arrived whole (408, 413, an early error) ends the connection;
- at `max_connections` the longest-idle connection gives way to a new one; only when none is idle does the
  newcomer get 503 with Retry-After, in OpenAI's error envelope like every other refusal;
- an HTTP/1.0 client's streamed answer is sent unchunked and ended by closing the connection (1.0 has no chunks).

`serve(app, limits, **uvicorn_options)` runs uvicorn with it, one process or several workers; `uvicorn_config`
makes the Config for a server run in-process (gateway.threaded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout_s: float = 75.0  # keep it above clients' and load balancers' own idle timeouts (AWS ALB: 60 s)
    header_timeout_s: float = 10.0  # a request line and headers take milliseconds; slow links a second or two
    max_header_bytes: int = 64 * 1024  # nginx's default large_client_header_buffers is 4 × 8 KiB
    max_connections: int | None = 2048  # per process; None: no cap


def _refusal(status: int, reason: str, message: str, code: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"] + ([f"retry-after: {retry_after}"] if retry_after is not None else [])
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `ConnectionLimits` (`config.kdgate_limits` in-process, else from `serve`
    through the environment)."""

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any], _loop: Any = None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "kdgate_limits", None) or _limits_from_environment()
        self.limit_concurrency = None  # the cap is kept in connection_made: idle connections give way first
        self.reading_head = True  # between a request's first byte (or the connection's start) and its last header
        self.head_bytes = 0
        self.idle_since = 0.0
        self.over_capacity = False
        self.deadline: asyncio.TimerHandle | None = None

    # -- the connection -------------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # noqa: ANN001  (asyncio's)
        super().connection_made(transport)
        self.idle_since = self.loop.time()
        cap = self.limits.max_connections
        if cap is not None and len(self.connections) > cap and not self._evict_longest_idle():
            self.over_capacity = True  # it may say what it wants, and hear 503, but not wait idle for long
        self._arm(self.limits.header_timeout_s if self.over_capacity else self.limits.idle_timeout_s, self._close_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.reading_head:
            super().data_received(data)
            return
        if self.head_bytes == 0 and data:  # the request's first byte: its headers now have a deadline
            self._arm(self.limits.header_timeout_s, self._head_too_slow)
        allowance = self.limits.max_header_bytes - self.head_bytes
        self.head_bytes += len(data)
        if len(data) <= allowance:
            super().data_received(data)
            return
        super().data_received(data[:allowance])  # the headers may end inside what is allowed
        if self.reading_head:
            if not self.transport.is_closing():
                self._refuse(_refusal(431, "Request Header Fields Too Large", f"the request line and headers are "
                                      f"larger than {self.limits.max_header_bytes} bytes; send fewer or smaller "
                                      "headers", "request_header_fields_too_large"))
            return
        super().data_received(data[allowance:])

    # -- parser callbacks -----------------------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._disarm()
        if self.over_capacity:
            self._refuse(_refusal(503, "Service Unavailable", "the server has as many connections as it takes and "
                                  "none is idle; retry after the Retry-After seconds", "too_many_connections",
                                  retry_after=1))
            return
        super().on_headers_complete()
        if self.cycle is not None and self.scope.get("http_version") == "1.0":
            self.cycle.__class__ = _Http10Cycle  # same state, the one method below

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head, self.head_bytes = True, 0  # what follows is the next request

    def on_response_complete(self) -> None:
        body_unread = self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        self.idle_since = self.loop.time()
        if body_unread and not self.transport.is_closing():  # answered before its body arrived: end it here
            self.transport.close()

    # -- timers and refusals --------------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback) -> None:  # noqa: ANN001
        self._disarm()
        self.deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _close_idle(self) -> None:
        if self.reading_head and self.head_bytes == 0 and not self.transport.is_closing():
            self.transport.close()

    def _head_too_slow(self) -> None:
        if self.reading_head and not self.transport.is_closing():
            self._refuse(_refusal(408, "Request Timeout", f"the request line and headers did not arrive within "
                                  f"{self.limits.header_timeout_s:g} s; send them at once", "request_timeout"))

    def _refuse(self, response: bytes) -> None:
        self._disarm()
        self.transport.write(response)
        self.transport.close()

    def is_idle(self) -> bool:
        return (self.reading_head and self.head_bytes == 0 and not self.transport.is_closing()
                and (self.cycle is None or self.cycle.response_complete))

    def _evict_longest_idle(self) -> bool:
        idle = [connection for connection in self.connections
                if connection is not self and isinstance(connection, GuardedHttpToolsProtocol) and connection.is_idle()]
        if not idle:
            return False
        min(idle, key=lambda connection: connection.idle_since).transport.close()
        return True


class _Http10Cycle(RequestResponseCycle):
    """HTTP/1.0 has no chunked encoding: a response of unknown length (a stream) goes out as it is and ends when the
    connection closes, which 1.0 always does (uvicorn chunked it, and a 1.0 client cannot read chunks)."""

    close_delimited = False

    async def send(self, message) -> None:  # noqa: ANN001  (ASGI's)
        if message["type"] == "http.response.start" and not any(
                name.lower() == b"content-length" for name, _ in message.get("headers", ())):
            self.close_delimited = True
            self.chunked_encoding = False  # uvicorn's checks then count against a length there is none of
            self.expected_content_length = 1 << 62
        elif message["type"] == "http.response.body" and self.close_delimited and not message.get("more_body"):
            self.expected_content_length = len(message.get("body", b""))  # the last piece: nothing is missing
        await super().send(message)


def uvicorn_config(app: Any, limits: ConnectionLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's Config with the guarded protocol and `limits`, for a `uvicorn.Server` run in-process."""
    config = uvicorn.Config(app, http="runtime.connections:GuardedHttpToolsProtocol",
                            timeout_keep_alive=limits.idle_timeout_s, **options)
    config.kdgate_limits = limits
    return config


LIMITS_VARIABLE = "_KDGATE_CONNECTION_LIMITS"  # `serve` to its worker processes; not a setting (KDGATE_*)


def serve(app: Any, limits: ConnectionLimits, **options: Any) -> None:
    """`uvicorn.run` with the guarded protocol and `limits`: one process, or `workers` processes (they inherit the
    limits through the environment, as they inherit the rest of their configuration)."""
    os.environ[LIMITS_VARIABLE] = json.dumps(dataclasses.asdict(limits))
    uvicorn.run(app, http="runtime.connections:GuardedHttpToolsProtocol", timeout_keep_alive=limits.idle_timeout_s,
                **options)


def _limits_from_environment() -> ConnectionLimits:
    given = os.environ.get(LIMITS_VARIABLE)
    return ConnectionLimits(**json.loads(given)) if given else ConnectionLimits()



class BodyTooLarge(Exception):
    """A request body past the limit (raised by `read_body` as soon as it is)."""


async def read_body(receive, max_bytes: int) -> bytes | None:  # noqa: ANN001  (ASGI's)
    """The whole request body, or None when the client left before sending it; `BodyTooLarge` as soon as it is
    longer than `max_bytes`."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise BodyTooLarge
        more = message.get("more_body", False)
    return body


def replaying(body: bytes, receive):  # noqa: ANN001
    """An ASGI receive giving the application `body` (already read) once, then the client's own messages (its
    disconnect, while an answer streams)."""
    given = False

    async def replay():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def refuse_too_large(send, max_bytes: int) -> None:  # noqa: ANN001
    """413 in OpenAI's error envelope, ending the connection (the rest of the body is never read)."""
    body = json.dumps({"error": {"message": f"the request body is larger than {max_bytes} bytes",
                                 "type": "invalid_request_error", "param": None,
                                 "code": "request_too_large"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI, for services whose requests are small (the trainer's webhook and jobs API): the body is read up to
    `max_bytes` before the application runs, and one past it is refused with 413 (by its Content-Length at once,
    else as it streams in), in OpenAI's error envelope, ending the connection."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001  (ASGI's)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await refuse_too_large(send, self.max_bytes)
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            return await refuse_too_large(send, self.max_bytes)
        if body is None:
            return None  # the client left: nothing to answer
        return await self.app(scope, replaying(body, receive), send)
