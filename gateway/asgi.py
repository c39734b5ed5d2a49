"""Answering from pure-ASGI middleware (auth, admission), before any route runs: the same envelope and headers
the app's exception handlers give."""

from __future__ import annotations

import json

from runtime.errors import GatewayError, to_envelope


async def send_error(send, error: GatewayError) -> None:
    status, body = to_envelope(error)
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers().items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
