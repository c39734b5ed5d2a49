"""Servers that break the protocol in one way each, for the load generator's failure accounting (no user runs
these; they stand for a broken upstream)."""

from __future__ import annotations

import asyncio
import json

CHUNK = json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})


class Faulty:
    """`POST /v1/chat/completions` misbehaves according to the path's prefix: /rejects/v1/… answers 429,
    /crashes/… 500, /garbage/… a non-JSON chunk, /endless/… never sends [DONE] nor closes, /silent/… a stream
    with only a role chunk and [DONE], /pings/… `:` ping lines around a normal answer."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        mode = scope["path"].split("/")[1]
        if mode in ("rejects", "crashes"):
            status = 429 if mode == "rejects" else 500
            body = json.dumps({"error": {"message": f"{mode} on purpose"}}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": body})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def frame(text: str, more: bool = True):
            await send({"type": "http.response.body", "body": text.encode(), "more_body": more})

        if mode == "garbage":
            await frame("data: {not json\n\n")
        elif mode == "endless":
            await frame(f"data: {CHUNK}\n\n")
            await asyncio.sleep(3600)
        elif mode == "silent":
            role = CHUNK.replace('"content": "hi"', '"role": "assistant", "content": ""')
            await frame(f"data: {role}\n\n")
        elif mode == "pings":
            await frame(": ping\n\n")
            await asyncio.sleep(0.05)
            await frame(f"data: {CHUNK}\n\n: ping\n\ndata: {CHUNK}\n\n")
        await frame("data: [DONE]\n\n", more=False)
