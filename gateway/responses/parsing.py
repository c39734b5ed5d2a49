"""A Responses request body to its wire model: chat's reading rules (size, JSON, the first error naming its field)."""

from __future__ import annotations

from pydantic import ValidationError

from gateway.chat.parsing import invalid_from_validation
from gateway.responses.protocol import ResponseRequest
from runtime.errors import InvalidRequest

NOT_AN_OBJECT = "the request body must be a JSON object with `input` and `model`"


def parse_response_request(body: bytes) -> ResponseRequest:
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object with `input` and `model`")
    try:
        return ResponseRequest.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        if error["type"] == "model_type" and not error["loc"]:
            raise InvalidRequest(NOT_AN_OBJECT) from None
        raise invalid_from_validation(exc) from None
