"""Wire models of `POST /v1/chat/completions`, in OpenAI's field order and with OpenAI's names.

The request declares the fields kdgate honours or accepts and ignores, as `gateway.chat.fields` classifies every
field; any other field is refused by `check_fields` with a 400 that names it (nothing is silently dropped), and the
OpenAPI document lists the declared ones, described from that table. Extensions sit in marked blocks at the end of
each model: vLLM's (which the local engine server speaks too, and the HTTP backend forwards) and kdgate's own.
Cross-field rules are named validators whose messages name the field and say what to do. Limits that depend on
configuration (max tokens, max top logprobs) or on the model (its vocabulary) are checked by the serving layer and
the backends.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.chat.fields import REQUEST_FIELDS, Treatment, refusal
from gateway.chat.formats import ResponseFormat, StructuredOutputs, constraint_spec
from gateway.tools.protocol import (
    DeltaToolCall,
    FunctionTool,
    NamedToolChoice,
    RequestToolCall,
    ToolCall,
    ToolChoiceField,
    check_results_answer_calls,
    check_tool_rules,
)

OPENAI_MAX_STOP_SEQUENCES = 4
LOGIT_BIAS_RANGE = (-100.0, 100.0)  # OpenAI's; vLLM clamps to it, kdgate refuses beyond it
PENALTY_RANGE = (-2.0, 2.0)  # presence and frequency penalties, OpenAI's and vLLM's
# vLLM takes any positive repetition penalty; beyond these, float32 logits overflow (a positive logit divided by 1e-40
# is inf, a zero one times inf is NaN) and the request fails while sampling
REPETITION_PENALTY_RANGE = (1e-6, 1e6)
TOKEN_ID_KEY = r"^[0-9]{1,10}$"  # a `logit_bias` key: a token id written as a decimal integer
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch's generators accept
Role = Literal["system", "developer", "user", "assistant", "tool"]


def _integral(value: Any) -> Any:
    """JSON's 20.0 is the integer 20 (JSON Schema agrees); strict parsing would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]


def bounded(ge: int, le: int | None = None):
    """An integer within bounds; the bounds sit inside the before-validator so the JSON schema states them."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


def _branches(schema: dict, **per_type: dict) -> None:
    """Add JSON-schema constraints to the `anyOf` branches of a field, by branch type (the OpenAPI document then
    says what the field's validator checks)."""
    for branch in schema.get("anyOf", [schema]):
        branch.update(per_type.get(branch.get("type"), {}))


def _content_schema(schema: dict) -> None:
    """Text parts with some text; a string's text is required by MESSAGE_RULES (an assistant's calls may come with
    an empty one, as the SDK's stream helpers send them back)."""
    _branches(schema, array={"minItems": 1, "contains": {"type": "object", "required": ["text"],
                                                         "properties": {"text": {"type": "string", "pattern": r"\S"}}}})


# The message rules below as JSON Schema: a tool result answers a call by its id; an assistant message may carry
# calls, and then its content may be left out; no other message has either key.
MESSAGE_RULES = [
    {"if": {"properties": {"role": {"const": "tool"}}},
     "then": {"required": ["tool_call_id", "content"], "properties": {"tool_call_id": {"type": "string"}}},
     "else": {"properties": {"tool_call_id": {"type": "null"}}}},
    {"if": {"properties": {"role": {"const": "assistant"}}},
     "else": {"properties": {"tool_calls": {"type": "null"}}}},
    {"if": {"properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array"}}, "required": ["tool_calls"]},
     "else": {"required": ["content"], "properties": {"content": {"type": ["string", "array"], "pattern": r"\S"}}}},
]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": MESSAGE_RULES})

    role: Role
    # an assistant's calls, answered by the `tool` messages after it (before `content`, whose check reads it)
    tool_calls: list[RequestToolCall] | None = Field(default=None, json_schema_extra=lambda s: _branches(
        s, array={"minItems": 1}))
    content: str | list[TextContentPart] | None = Field(default=None, json_schema_extra=_content_schema)
    name: str | None = None  # passed to the chat template with the message, as vLLM does
    tool_call_id: str | None = None  # a `tool` message: the call it answers

    @model_validator(mode="before")
    @classmethod
    def check_message_fields(cls, value: Any) -> Any:
        """A message key other than these is refused, never dropped."""
        if isinstance(value, dict):
            for key in value:
                if key not in ("role", "content", "name", "tool_calls", "tool_call_id"):
                    raise ValueError(f"`{key}` in a message is not supported: kdgate sends each message's `role`, "
                                     "`content`, `name`, `tool_calls` and `tool_call_id` to the model and nothing "
                                     "else; drop it")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def check_content_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for index, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"part {index} has type {kind!r}; only text parts are supported, "
                                     "send images or audio to a multimodal endpoint instead")
        return value

    @field_validator("content")
    @classmethod
    def check_not_empty(cls, value, info):
        """Some text (the document's `\\S`, no more), except beside calls: the SDK's stream helpers send an
        assistant's calls back with an empty content."""
        if value is not None and not info.data.get("tool_calls") and not text_of(value).strip(JSON_SCHEMA_SPACE):
            raise ValueError("content is empty; send the text of the message")
        return value

    @model_validator(mode="after")
    def check_tool_keys(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a `tool` message needs `tool_call_id`: the id of the call whose result it is")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError(f"`tool_call_id` belongs to `tool` messages; drop it from this `{self.role}` message")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"`tool_calls` belongs to `assistant` messages; drop it from this `{self.role}` "
                             "message")
        if self.tool_calls is not None and not self.tool_calls:
            raise ValueError("`tool_calls` is empty; drop it, or list the calls the assistant made")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is missing; send the message text as a string or as text parts")
        return self

    def text(self) -> str:
        return "" if self.content is None else text_of(self.content)

    def to_template(self) -> dict:
        """The message as the chat template gets it (vLLM's shape)."""
        message = {"role": self.role, "content": self.text()}
        if self.name:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


# ECMA-262's white space and line terminators, which a JSON Schema `pattern` of `\S` means: Python's own notion
# (str.isspace) adds the separators U+001C-001F and NEL, and content the document allows was refused as empty.
JSON_SCHEMA_SPACE = "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000\ufeff"


def text_of(content: str | list[TextContentPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


# The cross-field rules of the validators below, as JSON Schema (for the OpenAPI document and schema-driven tests).
CROSS_FIELD_RULES = [
    {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
     "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
    {"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
     "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    {"if": {"required": ["stream"], "properties": {"stream": {"const": True}}},
     "then": {"properties": {"prompt_logprobs": {"anyOf": [{"type": "null"}, {"const": 0}]}}}},
    {"if": {"required": ["continue_final_message"], "properties": {"continue_final_message": {"const": True}}},
     "then": {"required": ["add_generation_prompt"], "properties": {"add_generation_prompt": {"const": False}}}},
    {"if": {"required": ["return_token_ids"], "properties": {"return_token_ids": {"const": True}}},
     "then": {"required": ["prompt_logprobs"], "properties": {"prompt_logprobs": {"type": "integer"}}}},
]


def _logit_bias_schema(schema: dict) -> None:
    """Keys are token ids and values biases, for any key: JSON Schema's `propertyNames` and `additionalProperties`
    (pydantic writes `patternProperties`, which lets a key of another shape through)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "object":
            _, values = branch.pop("patternProperties").popitem()
            branch.update(propertyNames={"pattern": TOKEN_ID_KEY}, additionalProperties=values)


def _request_schema(schema: dict) -> None:
    """The cross-field rules, and each property described from the field table (what kdgate does with it)."""
    schema["allOf"] = CROSS_FIELD_RULES
    for name, prop in schema["properties"].items():
        field = REQUEST_FIELDS[name]
        text = field.what[0].upper() + field.what[1:]
        if field.treatment == Treatment.IGNORED:
            text = f"Accepted and ignored: {field.what}"
        elif field.origin == "vllm":
            text += " (vLLM)"
        prop["description"] = text + "."


Penalty = Annotated[float, Field(ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1], allow_inf_nan=False)]
Bias = Annotated[float, Field(ge=LOGIT_BIAS_RANGE[0], le=LOGIT_BIAS_RANGE[1], allow_inf_nan=False)]
TokenIdKey = Annotated[str, Field(pattern=TOKEN_ID_KEY)]


class ChatCompletionRequest(BaseModel):
    # strict: a number or boolean sent as a string is refused, as OpenAI's API refuses it (lax parsing accepted
    # "5" for `max_tokens` while the documented schema says integer). forbid: `check_fields` refuses any other field
    # first, naming it; forbidding here also tells the OpenAPI document (`additionalProperties: false`).
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_request_schema)

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenIdKey, Bias] | None = Field(default=None, json_schema_extra=_logit_bias_schema)
    logprobs: bool = False
    max_completion_tokens: Integer | None = Field(default=None, json_schema_extra=lambda s: _branches(
        s, integer={"minimum": 1}))
    max_tokens: Integer | None = Field(default=None, json_schema_extra=lambda s: _branches(s, integer={"minimum": 1}))
    metadata: dict[str, str] | None = None
    n: Integer = Field(default=1, json_schema_extra={"minimum": 1, "maximum": 1})
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: Penalty | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: bounded(*SEED_RANGE) | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = Field(default=None, json_schema_extra=lambda s: _branches(
        s, string={"minLength": 1}, array={"maxItems": OPENAI_MAX_STOP_SEQUENCES,
                                           "items": {"type": "string", "minLength": 1}}))
    store: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    tool_choice: ToolChoiceField | None = None
    tools: list[FunctionTool] | None = None
    top_logprobs: bounded(0) | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    user: str | None = None

    # --- vLLM extensions (vllm/entrypoints/openai/chat_completion/protocol.py); the engine server speaks them ---
    top_k: bounded(-1) | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, ge=REPETITION_PENALTY_RANGE[0],
                                             le=REPETITION_PENALTY_RANGE[1], allow_inf_nan=False)
    stop_token_ids: list[bounded(0)] | None = None
    ignore_eos: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    prompt_logprobs: bounded(0) | None = None
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="before")
    @classmethod
    def check_fields(cls, data: Any) -> Any:
        """Every field is honoured or refused: a field the table refuses, or does not know, is a 400 naming it; a
        refused field whose value asks for nothing kdgate does not do anyway (null, `tools: []`) is dropped here."""
        if not isinstance(data, dict):
            return data
        refused = refusal(data)
        if refused is not None:
            raise ValueError(refused[1])
        return {name: value for name, value in data.items() if REQUEST_FIELDS[name].treatment != Treatment.REFUSED}

    @field_validator("logit_bias", mode="before")
    @classmethod
    def check_logit_bias(cls, value: Any) -> Any:
        low, high = LOGIT_BIAS_RANGE
        for key, bias in (value.items() if isinstance(value, dict) else ()):
            if not re.fullmatch(TOKEN_ID_KEY, key):
                raise ValueError(f"keys are token ids written as decimal integers, such as \"1234\"; got {key!r}")
            if isinstance(bias, bool) or not isinstance(bias, int | float) or not (
                    math.isfinite(bias) and low <= bias <= high):
                raise ValueError(f"the bias of token {key} must be a number from {low:g} to {high:g}, got {bias!r}")
        return value

    @field_validator("stop")
    @classmethod
    def check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is None:
            return None
        if len(stops) > OPENAI_MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {OPENAI_MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(stop == "" for stop in stops):
            raise ValueError("stop sequences must be non-empty strings; remove the empty one")
        return stops

    @field_validator("n")
    @classmethod
    def check_n(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"only n=1 is supported, got {value}: each choice would need its own routing decision "
                             f"and shadow record; send {value} separate requests (with different `seed`s) instead")
        return value

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def check_max_tokens_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs` set to true; set `logprobs: true` or drop "
                             "`top_logprobs`")
        return self

    @model_validator(mode="after")
    def check_stream_options(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed with `stream: true`; drop it or set `stream: true`")
        if self.stream and self.prompt_logprobs:
            raise ValueError("`prompt_logprobs` cannot be streamed; set `stream: false` to get prompt logprobs")
        return self

    @model_validator(mode="after")
    def check_return_token_ids(self) -> ChatCompletionRequest:
        # The HTTP backend reads the prompt's ids only from a non-streamed answer, which it asks for with
        # `prompt_logprobs`: alone, the field would be honoured on the local engine and dropped behind vLLM.
        if self.return_token_ids and self.prompt_logprobs is None:
            raise ValueError("`return_token_ids` is supported together with `prompt_logprobs` only; add "
                             "`prompt_logprobs: 0` to get the prompt's token ids")
        return self

    @model_validator(mode="after")
    def check_continue_final_message(self) -> ChatCompletionRequest:
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("`continue_final_message` and `add_generation_prompt` cannot both be true; set "
                             "`add_generation_prompt: false` to continue the last assistant message")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("`continue_final_message` needs the last message to have role `assistant`")
        return self

    @model_validator(mode="after")
    def check_structured_outputs(self) -> ChatCompletionRequest:
        self.structured_spec()  # raises for two constraints, or a format that contradicts itself
        return self

    @model_validator(mode="after")
    def check_tools(self) -> ChatCompletionRequest:
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        format_field = None if self.structured_spec() is None else (
            "structured_outputs" if self.structured_outputs is not None else "response_format")
        check_tool_rules([tool.function.name for tool in self.tools or ()],
                         "function" if named is not None else self.tool_choice, named, format_field)
        check_results_answer_calls(([call.id for call in message.tool_calls or ()], message.tool_call_id,
                                    f"messages[{index}].tool_call_id") for index, message in enumerate(self.messages))
        return self

    def tool_choice_mode(self) -> str:
        """`none` (no tools, or calls not asked for: the answer is text), `auto`, `required` or `function`."""
        if not self.tools:
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function"
        return self.tool_choice or "auto"

    def structured_spec(self) -> dict | None:
        """The answer's constraint as vLLM's `structured_outputs` object; None for free text."""
        return constraint_spec(self.response_format, self.structured_outputs)

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` wins over the deprecated `max_tokens`, as in OpenAI's API."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---------------------------------------------------------------------------------------------------------------
# Responses


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class RouteInfo(BaseModel):
    """kdgate extension: which backend served the request and why."""

    route: str
    reason: str
    model: str
    student_version: str | None = Field(default=None, description="the student version that served or started "
                                        "this request (also the `x-kdgate-student-version` header)")
    handed_off_tokens: int | None = Field(default=None, description="after a mid-stream handoff: how many of the "
                                          "answer's first tokens the student wrote (the teacher wrote the rest)")


class PromptLogprob(BaseModel):
    """One entry of vLLM's `prompt_logprobs` dicts, keyed by token id as a string."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def _none(value: Any) -> bool:
    return value is None


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(default=None, exclude_if=_none)  # vLLM extension


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None

    # --- vLLM extensions ---
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(default=None, exclude_if=_none)
    prompt_token_ids: list[int] | None = Field(default=None, exclude_if=_none)
    # --- kdgate extensions ---
    kdgate: RouteInfo | None = Field(default=None, exclude_if=_none)


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_none)
    content: str | None = Field(default=None, exclude_if=_none)
    tool_calls: list[DeltaToolCall] | None = Field(default=None, exclude_if=_none)


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(default=None, exclude_if=_none)  # vLLM extension


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=_none)

    # --- kdgate extensions ---
    kdgate: RouteInfo | None = Field(default=None, exclude_if=_none)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "kdgate"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model (vLLM's field)
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]



class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None  # a machine-readable reason (`model_not_found`, `rate_limit_exceeded`) or null, as OpenAI's


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every non-2xx response of the API."""

    error: ErrorBody
