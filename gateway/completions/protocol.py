"""Wire models of `POST /v1/completions`, in OpenAI's field order and with OpenAI's names (the `openai` package's
`completion_create_params`), then vLLM's extensions in a marked block.

The request declares the fields kdgate honours or accepts and ignores, as `gateway.completions.fields` classifies
every field; any other field is refused by `check_fields` with a 400 that names it. The sampling fields are chat's:
same types, ranges and validators (`gateway.chat.protocol`), so a rule is written once. Responses are OpenAI's
`text_completion` shapes with vLLM's `stop_reason` and kdgate's `kdgate` route object.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.chat.fields import Treatment
from gateway.chat.formats import ResponseFormat, StructuredOutputs, constraint_spec
from gateway.chat.protocol import (
    SEED_RANGE,
    Bias,
    ChatCompletionRequest,
    Integer,
    Penalty,
    RouteInfo,
    StreamOptions,
    TokenIdKey,
    Usage,
    _branches,
    _logit_bias_schema,
    _none,
    bounded,
)
from gateway.completions.fields import REQUEST_FIELDS, refusal

DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for a completion

# The cross-field rules of the validators below, as JSON Schema (for the OpenAPI document and schema-driven tests).
CROSS_FIELD_RULES = [
    {"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
     "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    {"if": {"required": ["echo"], "properties": {"echo": {"const": True}}},
     "then": {"properties": {"logprobs": {"type": "null"}}}},
]


def _prompt_schema(schema: dict) -> None:
    _branches(schema, string={"minLength": 1},
              array={"minItems": 1, "maxItems": 1, "items": {"type": "string", "minLength": 1}})


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


class CompletionRequest(BaseModel):
    # strict and forbid as the chat request: a number sent as a string is refused, and `check_fields` refuses any
    # other field first, naming it
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_request_schema)

    model: str | None = None
    prompt: str | list[str] = Field(json_schema_extra=_prompt_schema)
    echo: bool = False
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenIdKey, Bias] | None = Field(default=None, json_schema_extra=_logit_bias_schema)
    logprobs: bounded(0) | None = None
    max_tokens: Integer | None = Field(default=None, json_schema_extra=lambda s: _branches(s, integer={"minimum": 1}))
    n: Integer = Field(default=1, json_schema_extra={"minimum": 1, "maximum": 1})
    presence_penalty: Penalty | None = None
    seed: bounded(*SEED_RANGE) | None = None
    stop: str | list[str] | None = ChatCompletionRequest.model_fields["stop"]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    user: str | None = None

    # --- vLLM extensions (vllm/entrypoints/openai/completion/protocol.py); the engine server speaks them ---
    top_k: bounded(-1) | None = None
    min_p: float | None = ChatCompletionRequest.model_fields["min_p"]
    repetition_penalty: float | None = ChatCompletionRequest.model_fields["repetition_penalty"]
    stop_token_ids: list[bounded(0)] | None = None
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    return_tokens_as_token_ids: bool = False

    @model_validator(mode="before")
    @classmethod
    def check_fields(cls, data: Any) -> Any:
        """Every field is honoured or refused: a field the table refuses, or does not know, is a 400 naming it; a
        refused field whose value asks for nothing (null, `best_of: 1`) is dropped here."""
        if not isinstance(data, dict):
            return data
        refused = refusal(data)
        if refused is not None:
            raise ValueError(refused[1])
        return {name: value for name, value in data.items() if REQUEST_FIELDS[name].treatment != Treatment.REFUSED}

    @field_validator("prompt", mode="before")
    @classmethod
    def check_prompt(cls, value: Any) -> Any:
        """One text prompt per request: a list of one string is that string; token ids and several prompts are
        refused with what to send instead (each prompt needs its own routing decision, as each chat request has)."""
        if isinstance(value, list):
            if value and all(isinstance(item, int) or isinstance(item, list) for item in value):
                raise ValueError("token ids are not supported as a prompt: kdgate routes text between two models "
                                 "that may not share a tokenizer; send the prompt's text")
            if len(value) != 1:
                raise ValueError(f"one prompt per request is supported, got {len(value)}: each needs its own routing "
                                 "decision; send one request per prompt")
            value = value[0]
        if value == "":
            raise ValueError("the prompt is empty; send the text to complete")
        return value

    # chat's rules for the fields the two share
    @field_validator("logit_bias", mode="before")
    @classmethod
    def check_logit_bias(cls, value: Any) -> Any:
        return ChatCompletionRequest.check_logit_bias(value)

    @field_validator("stop")
    @classmethod
    def check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        return ChatCompletionRequest.check_stop(value)

    @field_validator("n")
    @classmethod
    def check_n(cls, value: int) -> int:
        return ChatCompletionRequest.check_n(value)

    @field_validator("max_tokens")
    @classmethod
    def check_max_tokens_positive(cls, value: int | None) -> int | None:
        return ChatCompletionRequest.check_max_tokens_positive(value)

    @model_validator(mode="after")
    def check_echo(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("`echo` with `logprobs` is not supported: it asks for the prompt's own logprobs, which "
                             "kdgate does not serve; drop `echo` (prepend the prompt yourself) or `logprobs`")
        return self

    @model_validator(mode="after")
    def check_stream_options(self) -> CompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed with `stream: true`; drop it or set `stream: true`")
        return self

    @model_validator(mode="after")
    def check_structured_outputs(self) -> CompletionRequest:
        self.structured_spec()  # raises for two constraints, or a format that contradicts itself
        return self

    def structured_spec(self) -> dict | None:
        """The answer's constraint as vLLM's `structured_outputs` object; None for free text."""
        return constraint_spec(self.response_format, self.structured_outputs)

    def text(self) -> str:
        """The prompt (a list of one was made that string when parsed)."""
        assert isinstance(self.prompt, str)
        return self.prompt


# ---------------------------------------------------------------------------------------------------------------
# Responses


class CompletionLogprobs(BaseModel):
    """OpenAI's completions logprobs, as vLLM fills them: per token its text, its logprob, a dict of the sampled
    token and the top alternatives, and where it starts in the completion's text."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(default=None, exclude_if=_none)  # vLLM extension


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None

    # --- kdgate extensions ---
    kdgate: RouteInfo | None = Field(default=None, exclude_if=_none)


class CompletionChunk(BaseModel):
    """A streamed chunk: the same shape as the response (OpenAI's), its usage only in the last one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default=None, exclude_if=_none)

    # --- kdgate extensions ---
    kdgate: RouteInfo | None = Field(default=None, exclude_if=_none)
