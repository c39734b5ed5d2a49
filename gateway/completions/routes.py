"""`POST /v1/completions`: parse, hand to serving, return JSON or an SSE stream (as the chat route does)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from gateway.chat.parsing import read_body
from gateway.completions.parsing import parse_completion_request
from gateway.completions.protocol import CompletionResponse
from gateway.endpoints import check_force_permission, forced_route, respond

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse)  # its body: gateway.openapi
async def create_completion(request: Request):
    started = time.monotonic()
    state = request.app.state
    completion_request = parse_completion_request(
        await read_body(request, state.max_body_bytes, state.body_read_timeout_s))
    forced = forced_route(request, state.completions.announce_route)
    check_force_permission(request, forced)
    return await respond(request, state.completions, completion_request, forced, started)
