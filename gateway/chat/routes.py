"""`POST /v1/chat/completions`: parse, hand to serving, return JSON or an SSE stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import ANONYMOUS
from gateway.chat.parsing import parse_chat_request, read_body
from gateway.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from gateway.routing import FORCE_HEADER
from router.policy import ROUTES
from runtime.errors import InvalidRequest, PermissionDenied

ROUTE_HEADER = "x-kdgate-route"
REASON_HEADER = "x-kdgate-route-reason"
VERSION_HEADER = "x-kdgate-student-version"

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)  # its body: gateway.openapi
async def create_chat_completion(request: Request):
    started = time.monotonic()
    state = request.app.state
    chat_request = parse_chat_request(await read_body(request, state.max_body_bytes, state.body_read_timeout_s))
    forced = forced_route(request, state.chat.announce_route)
    check_permissions(request, chat_request, forced)
    ticket = getattr(request.state, "ticket", None)  # the admission (gateway.limits); none on an engine server
    if chat_request.stream:
        # Priming (and a confidence policy's hold-back) happens before the response starts: watch for a disconnect.
        prepared = await cancel_on_disconnect(request, state.chat.stream(chat_request, forced, started))
        return StreamingResponse(_accounted(prepared, ticket), media_type="text/event-stream",
                                 headers=route_headers(prepared.decision, state.chat.announce_route,
                                                       prepared.student_version)
                                 | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response, decision = await cancel_on_disconnect(request, state.chat.complete(chat_request, forced, started))
    if ticket is not None:
        await ticket.spent(response.usage.total_tokens)
    return JSONResponse(response.model_dump(mode="json"),
                        headers=route_headers(decision, state.chat.announce_route,
                                              response.kdgate.student_version if response.kdgate else None))


async def _accounted(prepared, ticket) -> AsyncIterator[str]:
    """The stream's frames; once they are all sent, its tokens count against the key's tokens per minute."""
    async for frame in prepared.frames:
        yield frame
    finish = prepared.outcome.finish
    if ticket is not None and finish is not None:
        await ticket.spent(finish.prompt_tokens + finish.completion_tokens)


async def cancel_on_disconnect(request: Request, work: Awaitable):
    """Run `work`, cancelling it if the client disconnects first (streams get this from Starlette already)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()


def forced_route(request: Request, routing: bool) -> str | None:
    value = request.headers.get(FORCE_HEADER)
    if value is None or not routing:
        return None
    value = value.strip().lower()
    if value not in ROUTES:
        raise InvalidRequest(f"header `{FORCE_HEADER}` must be one of {', '.join(ROUTES)}, got {value!r}",
                             parameter=FORCE_HEADER)
    return value


def check_permissions(request: Request, chat_request: ChatCompletionRequest, forced: str | None) -> None:
    """What costs a teacher call on demand or scores arbitrary text needs the key's permission."""
    principal = getattr(request.state, "principal", ANONYMOUS)
    if forced is not None and not principal.may("force_route"):
        raise PermissionDenied(f"the key `{principal.name}` may not choose the backend (`{FORCE_HEADER}`); drop "
                               "the header or ask for the `force_route` permission", parameter=FORCE_HEADER)
    if chat_request.prompt_logprobs is not None and not principal.may("prompt_logprobs"):
        raise PermissionDenied(f"the key `{principal.name}` may not ask for `prompt_logprobs`; drop it or ask for "
                               "the `prompt_logprobs` permission", parameter="prompt_logprobs")


def route_headers(decision, routing: bool, student_version: str | None = None) -> dict[str, str]:
    if not routing:
        return {}
    headers = {ROUTE_HEADER: decision.route, REASON_HEADER: decision.reason}
    if student_version is not None:
        headers[VERSION_HEADER] = student_version
    return headers
