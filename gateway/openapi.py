"""The OpenAPI document: FastAPI's, completed with what the routes do by hand.

The chat, completions and responses routes parse their bodies themselves (to name bad fields in OpenAI's error
envelope), so FastAPI knows neither their request schemas nor their error statuses nor their SSE streams; they are
added here, with every schema they refer to in `components`, so that each `$ref` resolves (schemathesis and client
generators stop at one that does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.chat.fields import REQUEST_FIELDS, RequestField, Treatment
from gateway.chat.protocol import ChatCompletionChunk, ChatCompletionRequest, ErrorResponse
from gateway.completions import fields as completion_fields
from gateway.completions.protocol import CompletionChunk, CompletionRequest
from gateway.responses import fields as response_fields
from gateway.responses.protocol import ResponseRequest, ResponseStreamEvent

REF = "#/components/schemas/{model}"
CHAT_ERRORS = {
    400: "invalid request: the message names the field and what to do",
    401: "no API key, or a wrong one",
    403: "the key may not do this (force a route, ask for prompt logprobs)",
    404: "unknown model",
    408: "the request body did not arrive in time",
    413: "the request body is too large",
    415: "the request body is not JSON",
    429: "this key's rate limit is spent: retry after `Retry-After` seconds",
    503: "no capacity, or a backend is down: retry after `Retry-After` seconds",
    504: "a backend timed out",
}
# path -> what the API is called, its field table, its request and chunk schemas
GENERATING = {
    "/v1/chat/completions": ("chat completions", REQUEST_FIELDS, "ChatCompletionRequest", "ChatCompletionChunk"),
    "/v1/completions": ("completions (text in, text out)", completion_fields.REQUEST_FIELDS, "CompletionRequest",
                        "CompletionChunk"),
    "/v1/responses": ("Responses API (stateless: nothing is stored)", response_fields.REQUEST_FIELDS,
                      "ResponseRequest", "ResponseStreamEvent"),
}
COMMON_ERRORS = {401: CHAT_ERRORS[401], 429: CHAT_ERRORS[429], 503: CHAT_ERRORS[503]}
STUDENT_ERRORS = COMMON_ERRORS | {
    400: "invalid: a field, a file that is missing, a tokenizer that differs (the message names it)",
    403: "not the admin credential",
    404: "no student version of that name",
    409: "another promotion or rollback landed first: look at the status and try again",
    502: "a student server refused the LoRA adapter: nothing was switched anywhere",
}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed document (built once, on first use)."""

    def document() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def build(app: FastAPI) -> dict:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, ChatCompletionChunk, CompletionRequest, CompletionChunk, ResponseRequest,
                  ResponseStreamEvent, ErrorResponse):
        _add_schema(schemas, model)
    limits = getattr(app.state, "served", None)
    if limits is not None:
        _this_servers_limits(schemas["ChatCompletionRequest"]["properties"], limits)
        _this_servers_limits(schemas["CompletionRequest"]["properties"], limits)
        _this_servers_limits(schemas["ResponseRequest"]["properties"], limits)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            errors = CHAT_ERRORS if path in GENERATING else (
                STUDENT_ERRORS if path.startswith("/admin/v1/students") else
                COMMON_ERRORS | {404: "no model of that id (the message names the ones there are)"}
                if path.startswith("/v1/models/") else COMMON_ERRORS)
            responses = operation.setdefault("responses", {})
            for status, description in errors.items():
                responses.setdefault(str(status), _error_response(description))
            if method == "post" and path in GENERATING:
                _describe_generating(operation, *GENERATING[path])
    return doc


def _describe_generating(operation: dict, api: str, table: dict[str, RequestField], request: str, chunk: str
                         ) -> None:
    refused = ", ".join(f"`{name}`" for name, field in table.items() if field.treatment == Treatment.REFUSED)
    harmless = ", ".join(f"`{name}` as `{json.dumps(value)}`" for name, field in table.items()
                         if field.treatment == Treatment.REFUSED for value in field.harmless_values)
    operation["description"] = (
        f"OpenAI's {api}. The request schema lists every field kdgate honours, and the few it accepts and "
        "ignores because they cannot change the answer (their descriptions say so). Any other field is a 400 that "
        f"names it; among OpenAI's, these are refused: {refused}. A refused field is accepted with a value that asks "
        f"for nothing: null, and {harmless}.")
    operation["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=request)}}}}
    ok = operation["responses"]["200"]
    if chunk == "ResponseStreamEvent":
        _describe_response_events(ok)
        return
    ok["description"] = ("the completion as JSON, or with `stream: true` a `text/event-stream` of "
                         "`data: <chunk JSON>` frames ending with `data: [DONE]`")
    ok["content"]["text/event-stream"] = {"schema": {  # one server-sent event (OpenAPI 3.2's SSE pattern)
        "description": f"each event's `data` is a {chunk}, or (once, mid-stream) an error envelope; the "
                       "last is the literal `[DONE]`",
        "type": "object", "required": ["data"],
        "anyOf": [{"properties": {"data": {"const": "[DONE]"}}},
                  {"properties": {"data": {"type": "string", "contentMediaType": "application/json",
                                           "contentSchema": {"anyOf": [
                                               {"$ref": REF.format(model=chunk)},
                                               {"$ref": REF.format(model="ErrorResponse")}]}}}}]}}


def _describe_response_events(ok: dict) -> None:
    ok["description"] = ("the `response` object as JSON, or with `stream: true` a `text/event-stream` of the "
                         "Responses API's events, each an `event: <type>` line and a `data: <event JSON>` line, "
                         "ending with `response.completed`, `response.incomplete` or `response.failed` (no `[DONE]`)")
    ok["content"]["text/event-stream"] = {"schema": {  # one server-sent event (OpenAPI 3.2's SSE pattern)
        "description": "each event's `data` is a ResponseStreamEvent whose `type` is the event's name",
        "type": "object", "required": ["event", "data"],
        "properties": {"event": {"type": "string"},
                       "data": {"type": "string", "contentMediaType": "application/json",
                                "contentSchema": {"$ref": REF.format(model="ResponseStreamEvent")}}}}}


def _this_servers_limits(properties: dict, served: ServedLimits) -> None:
    """What this server accepts beyond the wire format: its model id, its max_tokens and logprob limits."""
    properties["model"]["anyOf"] = [{"type": "string", "enum": [served.model]}, {"type": "null"}]
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        for branch in properties.get(name, {}).get("anyOf", ()):
            if branch.get("type") == "integer":
                branch["maximum"] = served.max_tokens
    for name in ("top_logprobs", "prompt_logprobs", "logprobs"):  # chat's `logprobs` is a boolean: untouched
        if name not in properties:
            continue
        target = properties[name]["anyOf"] if "anyOf" in properties[name] else [properties[name]]
        for branch in target:
            if branch.get("type") == "integer":
                branch["maximum"] = served.max_top_logprobs


@dataclass(frozen=True)
class ServedLimits:
    model: str
    max_tokens: int
    max_top_logprobs: int


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": REF.format(model="ErrorResponse")}}}}


def _add_schema(schemas: dict, model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas[model.__name__] = schema
