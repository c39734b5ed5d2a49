"""Request bodies to wire models: size limit, JSON, validation — every failure an `InvalidRequest` naming the field."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from starlette.requests import Request

from gateway.chat.protocol import ChatCompletionRequest
from runtime.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole body: JSON by content type (or none given), at most `max_bytes`, within `timeout_s`."""
    media_type = request.headers.get("content-type", JSON_MEDIA_TYPE).split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(f"the request body must be JSON (content-type: {JSON_MEDIA_TYPE}), got "
                                   f"{media_type or 'an empty content type'!r}; set the header",
                                   code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise _too_large(len(body), max_bytes)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s ({len(body)} bytes came); "
                             "send it whole, or raise `KDGATE_BODY_READ_TIMEOUT_S`", code="request_timeout") from None
    return bytes(body)


def _too_large(size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is {size} bytes or more, above the limit of {max_bytes}; send a "
                           "shorter conversation or raise `KDGATE_MAX_BODY_BYTES`", code="payload_too_large")


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object with `messages` and `model`")
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    """The first validation error, as a message that names the field and says what to do."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind == "json_invalid":
        reason = error["ctx"].get("error", error["msg"])
        if "hex escape" in reason:  # Python's json takes a lone surrogate; no tokenizer can encode it
            return InvalidRequest(f"the request body holds a \\uD800-\\uDFFF escape without its surrogate pair "
                                  f"({reason}): that is not a character; send the character as UTF-8, or escape "
                                  "it as its pair (\\uD83D\\uDE00 for U+1F600)")
        return InvalidRequest(f"the request body is not valid JSON ({reason}); send a JSON object")
    parameter = dotted(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not parameter and message.startswith("`"):
        parameter = message[1:message.index("`", 1)]  # a cross-field rule names its field first
    if kind == "missing":
        text = f"`{parameter}` is required"
    elif kind == "too_short":
        text = f"`{parameter}` must not be empty; send at least one item"
    elif kind == "model_type" and not parameter:
        text = "the request body must be a JSON object with `messages` and `model`"
    elif kind == "extra_forbidden":
        text = f"`{parameter}` is not allowed here; remove it"
    elif parameter and not message.startswith("`"):
        text = f"`{parameter}`: {message}"
    else:
        text = message
    return InvalidRequest(text, parameter=parameter or None)


def dotted(location: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', dropping pydantic's union-branch tags."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("str", "list[TextContentPart]", "function-after[check_not_empty()]") or "[" in str(part):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text
