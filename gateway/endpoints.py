"""The HTTP side every generating endpoint shares, once its body is parsed: the forced route and the key's right to
force it, the route headers, cancelling the work when the client leaves, and counting the answer's tokens against
the key's tokens per minute. `respond` answers with JSON or an SSE stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import ANONYMOUS
from gateway.routing import FORCE_HEADER
from router.policy import ROUTES
from runtime.errors import InvalidRequest, PermissionDenied

ROUTE_HEADER = "x-kdgate-route"
REASON_HEADER = "x-kdgate-route-reason"
VERSION_HEADER = "x-kdgate-student-version"


async def respond(request: Request, serving, parsed, forced: str | None, started: float):
    """`serving`'s answer to the parsed request: a primed SSE stream, or the whole answer as JSON."""
    ticket = getattr(request.state, "ticket", None)  # the admission (gateway.limits); none on an engine server
    if parsed.stream:
        # Priming (and a confidence policy's hold-back) happens before the response starts: watch for a disconnect.
        prepared = await cancel_on_disconnect(request, serving.stream(parsed, forced, started))
        return StreamingResponse(_accounted(prepared, ticket), media_type="text/event-stream",
                                 headers=route_headers(prepared.decision, serving.announce_route,
                                                       prepared.student_version)
                                 | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response, decision = await cancel_on_disconnect(request, serving.complete(parsed, forced, started))
    if ticket is not None:
        await ticket.spent(response.usage.total_tokens)
    return JSONResponse(response.model_dump(mode="json"),
                        headers=route_headers(decision, serving.announce_route,
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


def check_force_permission(request: Request, forced: str | None) -> None:
    """Choosing the backend costs a teacher call on demand: the key needs the `force_route` permission."""
    principal = getattr(request.state, "principal", ANONYMOUS)
    if forced is not None and not principal.may("force_route"):
        raise PermissionDenied(f"the key `{principal.name}` may not choose the backend (`{FORCE_HEADER}`); drop "
                               "the header or ask for the `force_route` permission", parameter=FORCE_HEADER)


def route_headers(decision, routing: bool, student_version: str | None = None) -> dict[str, str]:
    if not routing:
        return {}
    headers = {ROUTE_HEADER: decision.route, REASON_HEADER: decision.reason}
    if student_version is not None:
        headers[VERSION_HEADER] = student_version
    return headers

