"""One measured request: send, read the SSE stream, and time it with a stated definition.

The clock starts when the request's headers start going out (httpx's `send_request_headers.started` trace event,
the point GuideLLM uses too), so the client's own request building and connection checkout — about a millisecond of
Python here — are not charged to the server. **TTFT** stops at the first SSE chunk that carries generated
content (a non-empty `delta.content` for chat, `text` for completions); **TTFC** at the first chunk of any kind
(vLLM's own benchmark counts that one: the role-only first chunk a chat server sends). `:` ping lines are not
chunks (the SSE parser drops them) and `[DONE]` ends the stream. Every later content chunk adds an inter-token gap.
Token counts come from the server (`stream_options.include_usage`); a server that sends no usage is counted in
content chunks instead, and the record says so. A request that never produces a token, a stream without
`[DONE]`, an HTTP error, a malformed chunk or a timeout is a failure with its reason.

Chat chunks are parsed with the gateway's own wire models, so a protocol change breaks this at import time or on the
first chunk, not silently in a report.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import BaseModel, ValidationError

from gateway.chat.protocol import ChatCompletionChunk, Usage
from runtime.sse import drain

ROUTE_HEADER = "x-kdgate-route"
REASON_HEADER = "x-kdgate-route-reason"
VERSION_HEADER = "x-kdgate-student-version"


class CompletionChunkChoice(BaseModel):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class CompletionChunk(BaseModel):
    """`/v1/completions` stream chunk (the gateway serves chat only; vLLM serves both)."""

    id: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


@dataclass
class RequestRecord:
    index: int
    scheduled: float  # seconds after the run's start when the load shape released it
    sent: float = 0.0  # seconds after the run's start when it was sent
    ttft: float | None = None
    ttfc: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_from_server: bool = False
    status: int | None = None
    error: str | None = None
    route: str | None = None
    reason: str | None = None
    student_version: str | None = None  # the gateway's x-kdgate-student-version
    prompt: int | None = None  # which of the run's prompts it sent
    answer_sha: str | None = None  # sha256 of the streamed text (12 hex): greedy answers compare across versions
    warmup: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def queue_time(self) -> float:
        """Time the request waited in the client for a concurrency slot after its arrival."""
        return max(0.0, self.sent - self.scheduled)

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e − TTFT) / (tokens − 1)."""
        if self.e2e is None or self.ttft is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        return {**self.__dict__, "ok": self.ok, "queue_time": self.queue_time, "tpot": self.tpot}


async def measure(client: httpx.AsyncClient, url: str, body: dict, headers: dict[str, str], record: RequestRecord,
                  origin: float, timeout: float) -> RequestRecord:
    """Send `body` to `url` (streamed) and fill `record`; `origin` is the run's perf_counter() zero."""
    chat = url.endswith("/chat/completions")
    chunk_model = ChatCompletionChunk if chat else CompletionChunk
    started = time.perf_counter()  # until the headers go out; then from the moment they did
    record.sent = started - origin
    headers_out: list[float] = []

    async def trace(event: str, info: dict) -> None:
        if not headers_out and event.endswith(".send_request_headers.started"):
            headers_out.append(time.perf_counter())

    last = started
    chunks = content_chunks = 0
    done = False
    answer = hashlib.sha256()
    try:
        async with aconnect_sse(client, "POST", url, json=body, headers=headers, extensions={"trace": trace},
                                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))) as source:
            if headers_out:
                started = last = headers_out[0]
                record.sent = started - origin
            response = source.response
            record.status = response.status_code
            record.route, record.reason = response.headers.get(ROUTE_HEADER), response.headers.get(REASON_HEADER)
            record.student_version = response.headers.get(VERSION_HEADER)
            if response.status_code >= 400:
                record.error = f"HTTP {response.status_code}: {_error_text(await response.aread())}"
                return record
            events = source.aiter_sse()
            async for event in events:
                now = time.perf_counter()
                if event.data.strip() == "[DONE]":
                    done = True
                    record.e2e = now - started
                    record.answer_sha = answer.hexdigest()[:12]
                    await drain(events)  # keep the connection for the next request, as SDK clients do
                    break
                try:
                    chunk = chunk_model.model_validate_json(event.data)
                except ValidationError as error:
                    record.error = f"malformed chunk: {_first_problem(error)}: {event.data[:120]!r}"
                    return record
                chunks += 1
                if record.ttfc is None:
                    record.ttfc = now - started
                if chunk.usage is not None:
                    record.input_tokens, record.output_tokens = chunk.usage.prompt_tokens, \
                        chunk.usage.completion_tokens
                    record.usage_from_server = True
                route = getattr(chunk, "kdgate", None)
                if route is not None:  # the gateway's final word on the route (a mid-stream handoff)
                    record.route, record.reason = route.route, route.reason
                texts = [text for choice in chunk.choices if (text := _content(choice, chat))]
                if texts:
                    answer.update("".join(texts).encode())
                    content_chunks += 1
                    if record.ttft is None:
                        record.ttft = now - started
                    else:
                        record.itl.append(now - last)
                    last = now
    except SSEError as error:
        record.error = f"not an SSE stream: {error}"
    except httpx.TimeoutException:
        record.error = f"timed out after {timeout:g} s"
    except httpx.HTTPError as error:
        record.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    finally:
        if record.e2e is None:
            record.e2e = time.perf_counter() - started
    if record.error is None:
        if content_chunks == 0:
            record.error = "no token: the stream carried no generated content"
        elif not done:
            record.error = "stream ended without [DONE]"
        if not record.usage_from_server:
            record.output_tokens = content_chunks
    return record


def _content(choice, chat: bool) -> str:
    return (choice.delta.content if chat else choice.text) or ""


def _error_text(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    except ValueError:
        return raw.decode(errors="replace")[:300]


def _first_problem(error: ValidationError) -> str:
    item = error.errors()[0]
    return f"{'.'.join(map(str, item['loc'])) or 'chunk'}: {item['msg']}"
