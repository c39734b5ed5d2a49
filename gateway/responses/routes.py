"""`POST /v1/responses`: parse, hand to serving, return JSON or an SSE stream (as the chat route does)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from gateway.chat.parsing import read_body
from gateway.endpoints import check_force_permission, forced_route, respond
from gateway.responses.parsing import parse_response_request
from gateway.responses.protocol import ResponseObject

router = APIRouter()


@router.post("/v1/responses", response_model=ResponseObject)  # its body: gateway.openapi
async def create_response(request: Request):
    started = time.monotonic()
    state = request.app.state
    response_request = parse_response_request(
        await read_body(request, state.max_body_bytes, state.body_read_timeout_s))
    forced = forced_route(request, state.responses.announce_route)
    check_force_permission(request, forced)
    return await respond(request, state.responses, response_request, forced, started)
