"""A zero-work OpenAI-compatible server: a measuring instrument, never a stand-in for the engine in functional tests.

It answers `/v1/chat/completions` and `/v1/completions` (streamed or not) and `/v1/models` after a configurable
time to first token, inter-token delay and output length, with logprobs when asked (so a confidence-routing
gateway in front of it does its real work). It does no model work, so whatever a client measures through a
gateway in front of it, minus what it measures straight at it, is the gateway's own cost.

It is a bare ASGI app with every chunk's bytes rendered once at start-up: the instrument must cost far less than
what it measures.

    kdgate loadtest zero-server --port 8100 --ttft-ms 20 --itl-ms 5 --output-tokens 32
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ZeroSettings:
    model: str = "zero"
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    output_tokens: int = 32
    prompt_tokens: int = 16  # what usage reports for any prompt
    top_logprobs: int = 5  # alternatives per token when the request asks for logprobs (at most this many)
    slots: int = 0  # answers generated at once (a batch's capacity); more wait their turn, in TTFT. 0: no limit


class ZeroServer:
    """The ASGI app. Tokens are the text " tok"; each logprob is log(0.9), its alternatives much lower."""

    def __init__(self, settings: ZeroSettings = ZeroSettings()):
        self.settings = settings
        self._slots: asyncio.Semaphore | None = None  # made in the server's loop, on first use
        self._models = json.dumps({"object": "list", "data": [
            {"id": settings.model, "object": "model", "created": 0, "owned_by": "zero",
             "max_model_len": 1 << 20}]}).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = (await receive())["type"]
                await send({"type": message + ".complete"})
                if message == "lifespan.shutdown":
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            return await _respond(send, 200, self._models)
        if method == "GET" and path in ("/health", "/healthz"):
            return await _respond(send, 200, b"{}")
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await _respond(send, 404, _error(f"no route {method} {path}"))
        try:
            body = json.loads(await _read(receive) or b"{}")
        except ValueError:
            return await _respond(send, 400, _error("the body is not JSON"))
        chat = path == "/v1/chat/completions"
        answer = _Answer(self.settings, body, chat)
        if self.settings.slots and self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.slots)
        async with self._slots or contextlib.nullcontext():
            if body.get("stream"):
                await self._stream(send, answer, body)
            else:
                await asyncio.sleep((self.settings.ttft_ms + self.settings.itl_ms * (answer.tokens - 1)) / 1000)
                await _respond(send, 200, answer.whole())

    async def _stream(self, send, answer: _Answer, body: dict) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        delay = self.settings.itl_ms / 1000
        await asyncio.sleep(self.settings.ttft_ms / 1000)
        started = time.perf_counter()
        if answer.chat:
            await _frame(send, answer.role_chunk)
        for index in range(answer.tokens):
            if index:  # a schedule, not a chain of sleeps: the delay does not drift with the event loop's load
                await asyncio.sleep(max(0.0, started + index * delay - time.perf_counter()))
            await _frame(send, answer.last_chunk if index == answer.tokens - 1 else answer.token_chunk)
        if (body.get("stream_options") or {}).get("include_usage"):
            await _frame(send, answer.usage_chunk)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


class _Answer:
    """One request's pre-rendered frames."""

    def __init__(self, settings: ZeroSettings, body: dict, chat: bool):
        self.chat = chat
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or settings.output_tokens
        self.tokens = max(1, min(int(limit), settings.output_tokens))
        self.finish = "length" if int(limit) < settings.output_tokens else "stop"  # the client's cap, or our end
        wanted = body.get("top_logprobs") if chat else body.get("logprobs")
        self.logprobs = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        self.top = min(int(wanted or 0), settings.top_logprobs)
        self.base = {"id": "zero-1", "created": int(time.time()), "model": body.get("model") or settings.model}
        self.usage = {"prompt_tokens": settings.prompt_tokens, "completion_tokens": self.tokens,
                      "total_tokens": settings.prompt_tokens + self.tokens}
        self.role_chunk = self._chunk({"role": "assistant", "content": ""}, None, with_logprobs=False)
        self.token_chunk = self._chunk({"content": " tok"}, None)
        self.last_chunk = self._chunk({"content": " tok"}, self.finish)
        self.usage_chunk = json.dumps({**self.base, "object": self._object(True), "choices": [],
                                       "usage": self.usage}).encode()

    def _object(self, streamed: bool) -> str:
        if self.chat:
            return "chat.completion.chunk" if streamed else "chat.completion"
        return "text_completion"

    def _token_logprobs(self) -> dict:
        alternatives = [{"token": f" alt{i}", "logprob": -3.0 - i, "bytes": None} for i in range(self.top - 1)]
        entry = {"token": " tok", "logprob": -0.10536, "bytes": None,
                 "top_logprobs": ([{"token": " tok", "logprob": -0.10536, "bytes": None}] + alternatives)[:self.top]}
        return {"content": [entry]}

    def _chunk(self, delta: dict, finish: str | None, with_logprobs: bool = True) -> bytes:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": self._token_logprobs()
                      if self.logprobs and with_logprobs else None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
        return json.dumps({**self.base, "object": self._object(True), "choices": [choice]}).encode()

    def whole(self) -> bytes:
        text = " tok" * self.tokens
        if self.chat:
            logprobs = {"content": self._token_logprobs()["content"] * self.tokens} if self.logprobs else None
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                      "finish_reason": self.finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish}
        return json.dumps({**self.base, "object": self._object(False), "choices": [choice],
                           "usage": self.usage}).encode()


async def _read(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _frame(send, payload: bytes) -> None:
    await send({"type": "http.response.body", "body": b"data: " + payload + b"\n\n", "more_body": True})


async def _respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()
