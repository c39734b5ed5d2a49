"""`POST /v1/chat/completions`: parse, hand to serving, return JSON or an SSE stream."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from gateway.auth import ANONYMOUS
from gateway.chat.parsing import parse_chat_request, read_body
from gateway.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from gateway.endpoints import check_force_permission, forced_route, respond
from runtime.errors import PermissionDenied

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)  # its body: gateway.openapi
async def create_chat_completion(request: Request):
    started = time.monotonic()
    state = request.app.state
    chat_request = parse_chat_request(await read_body(request, state.max_body_bytes, state.body_read_timeout_s))
    forced = forced_route(request, state.chat.announce_route)
    check_permissions(request, chat_request, forced)
    return await respond(request, state.chat, chat_request, forced, started)


def check_permissions(request: Request, chat_request: ChatCompletionRequest, forced: str | None) -> None:
    """What costs a teacher call on demand or scores arbitrary text needs the key's permission."""
    check_force_permission(request, forced)
    principal = getattr(request.state, "principal", ANONYMOUS)
    if chat_request.prompt_logprobs is not None and not principal.may("prompt_logprobs"):
        raise PermissionDenied(f"the key `{principal.name}` may not ask for `prompt_logprobs`; drop it or ask for "
                               "the `prompt_logprobs` permission", parameter="prompt_logprobs")
