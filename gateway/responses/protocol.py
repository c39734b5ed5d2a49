"""Wire models of `POST /v1/responses`, with OpenAI's names (the `openai` package's `response_create_params` and
`openai.types.responses`).

The request declares the fields kdgate honours or accepts and ignores, as `gateway.responses.fields` classifies
every field; any other field is refused by `check_fields` with a 400 that names it. `input` is message items, and
the `function_call` and `function_call_output` items of a tool conversation (gateway.responses.tools), which become
chat messages; `text.format` is chat's `response_format` flattened as the Responses API writes it, and becomes the
same constraint. Responses are OpenAI's `response` object (a `message` output item of one `output_text` part, then
a `function_call` item per call) with kdgate's `kdgate` route object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from gateway.chat.fields import Treatment
from gateway.chat.formats import SCHEMA_NAME
from gateway.chat.protocol import (
    JSON_SCHEMA_SPACE,
    Integer,
    RouteInfo,
    TokenLogprob,
    _branches,
    _none,
    bounded,
)
from gateway.responses.fields import REQUEST_FIELDS, refusal
from gateway.responses.tools import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolParam,
    ResponseFunctionToolCall,
    ToolChoiceField,
    ToolChoiceFunction,
)
from gateway.tools.protocol import check_results_answer_calls, check_tool_rules

LOGPROBS_INCLUDE = "message.output_text.logprobs"
TEXT_PARTS = ("input_text", "output_text")
MESSAGE_KEYS = ("type", "role", "content", "id", "status")  # an easy input message, or an output message sent back
ITEM_TYPES = ("message", "function_call", "function_call_output")
Role = Literal["system", "developer", "user", "assistant"]  # a message item's (a tool's output is its own item)


class InputText(BaseModel):
    """An `input_text` part, or an `output_text` part of an earlier answer sent back (its annotations and logprobs
    are accepted and not read)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] | None = None
    role: Role
    content: str | list[InputText] = Field(json_schema_extra=lambda s: _branches(
        s, string={"pattern": r"\S"}, array={"minItems": 1, "contains": {
            "type": "object", "required": ["text"], "properties": {"text": {"type": "string", "pattern": r"\S"}}}}))
    id: str | None = None  # an output message sent back keeps its id and status: accepted, not read
    status: str | None = None

    @model_validator(mode="before")
    @classmethod
    def check_item(cls, value: Any) -> Any:
        """Message items (function calls and their outputs are items of their own): a reasoning item, an item
        reference or a hosted tool's call is refused by its type (they need stored state or tools kdgate does not
        run), and so is a key a message does not have."""
        if isinstance(value, dict):
            kind = value.get("type")
            if kind not in (None, *ITEM_TYPES):
                raise ValueError(f"items of type `{kind}` are not supported: kdgate takes message, `function_call` "
                                 "and `function_call_output` items; drop the item")
            for key in value:
                if key not in MESSAGE_KEYS:
                    raise ValueError(f"`{key}` in a message item is not supported: kdgate reads `role` and "
                                     "`content`; drop it")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def check_content_parts(cls, value: Any) -> Any:
        for index, part in enumerate(value if isinstance(value, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in TEXT_PARTS:
                raise ValueError(f"part {index} has type {kind!r}; only `input_text` and `output_text` parts are "
                                 "supported: kdgate serves text models, send the text")
        return value

    @field_validator("content")
    @classmethod
    def check_not_empty(cls, value: str | list[InputText]) -> str | list[InputText]:
        if not cls.text_of(value).strip(JSON_SCHEMA_SPACE):
            raise ValueError("content is empty; send the text of the message")
        return value

    @staticmethod
    def text_of(content: str | list[InputText]) -> str:
        return content if isinstance(content, str) else "".join(part.text for part in content)

    def text(self) -> str:
        return self.text_of(self.content)


FORMAT_RULE = {"anyOf": [  # a schema and a name with type `json_schema`, and only then
    {"properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}, "name": {"type": "string"}},
     "required": ["schema", "name"]},
    {"properties": {"type": {"enum": ["text", "json_object"]}, "schema": {"type": "null"}, "name": {"type": "null"},
                    "strict": {"type": "null"}, "description": {"type": "null"}}}]}


class TextFormat(BaseModel):
    """`{"type": "text"}`, `{"type": "json_object"}`, or `{"type": "json_schema", "name", "schema", "strict"}`."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, json_schema_extra=FORMAT_RULE)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=SCHEMA_NAME)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def check_format(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or self.name is None):
            raise ValueError("`text.format` of type `json_schema` needs `name` and `schema`; send "
                             '`{"type": "json_schema", "name": ..., "schema": {...}}`')
        if self.type != "json_schema" and (self.schema_, self.name, self.strict, self.description) != (None,) * 4:
            raise ValueError(f"`text.format`'s `name`, `schema`, `strict` and `description` go with type "
                             f"`json_schema` only, not `{self.type}`")
        return self

    def structured_outputs(self) -> dict | None:
        if self.type == "json_schema":
            return {"json": self.schema_}
        return {"json_object": True} if self.type == "json_object" else None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = Field(default=None, description="`medium` only: say the length you want "
                                                "in the input, or set `max_output_tokens`")


def _item_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    return f"item[{kind}]" if kind in ("function_call", "function_call_output") else "item[message]"


# An item by its type: a message (its type may be left out), a call sent back, or a call's output.
InputItem = Annotated[Annotated[InputMessage, Tag("item[message]")]
                      | Annotated[FunctionCallItem, Tag("item[function_call]")]
                      | Annotated[FunctionCallOutputItem, Tag("item[function_call_output]")], Discriminator(_item_kind)]
# A string or items, told apart by the value's type: a bad item is then named where it is (`input[2].role`) instead
# of by the string branch's "Input should be a valid string". The tags are names `dotted` leaves out.
Input = Annotated[Annotated[str, Tag("str")] | Annotated[list[InputItem], Tag("list[InputItem]")],
                  Discriminator(lambda value: "str" if isinstance(value, str) else "list[InputItem]")]


def _input_schema(schema: dict) -> None:
    """The branches of `input` (a `oneOf`, for the discriminated union): a string with text, or some items."""
    for branch in schema["oneOf"]:
        branch.update({"pattern": r"\S"} if branch["type"] == "string" else {"minItems": 1})


ANSWER_FORMAT = {"required": ["text"], "properties": {"text": {
    "type": "object", "required": ["format"], "properties": {"format": {
        "type": "object", "required": ["type"], "properties": {"type": {"enum": ["json_object", "json_schema"]}}}}}}}
# The cross-field rules of the validators below, as JSON Schema (for the OpenAPI document and schema-driven tests).
# That a named function is among `tools`, and that no function is named twice, no JSON Schema can state.
CROSS_FIELD_RULES = [
    # `top_logprobs` above 0 needs the logprobs included (check_logprobs)
    {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
     "then": {"required": ["include"], "properties": {"include": {"type": "array", "minItems": 1}}}},
    # a `tool_choice` other than `none` needs tools; a call for an answer leaves no room for a format (check_tools)
    {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"enum": ["none", None]}}}},
     "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
    {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"anyOf": [
        {"const": "required"}, {"type": "object"}]}}}, "then": {"not": ANSWER_FORMAT}},
]


def _request_schema(schema: dict) -> None:
    """The cross-field rules, and each property described from the field table (what kdgate does with it)."""
    schema["allOf"] = CROSS_FIELD_RULES
    for name, prop in schema["properties"].items():
        field = REQUEST_FIELDS[name]
        text = field.what[0].upper() + field.what[1:]
        prop["description"] = (f"Accepted and ignored: {field.what}" if field.treatment == Treatment.IGNORED
                               else text) + "."


class ResponseRequest(BaseModel):
    # strict and forbid as the chat request: a number sent as a string is refused, and `check_fields` refuses any
    # other field first, naming it
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_request_schema)

    include: list[Literal["message.output_text.logprobs"]] | None = None
    input: Input = Field(json_schema_extra=_input_schema)
    instructions: str | None = None
    max_output_tokens: Integer | None = Field(default=None, json_schema_extra=lambda s: _branches(
        s, integer={"minimum": 1}))
    max_tool_calls: bounded(1) | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    text: TextConfig | None = None
    tool_choice: ToolChoiceField | None = None
    tools: list[FunctionToolParam] | None = None
    top_logprobs: bounded(0) | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def check_fields(cls, data: Any) -> Any:
        """Every field is honoured or refused: a field the table refuses, or does not know, is a 400 naming it; a
        refused field whose value asks for nothing (null, `store: false`, `tools: []`) is dropped here."""
        if not isinstance(data, dict):
            return data
        refused = refusal(data)
        if refused is not None:
            raise ValueError(refused[1])
        return {name: value for name, value in data.items() if REQUEST_FIELDS[name].treatment != Treatment.REFUSED}

    @field_validator("input")
    @classmethod
    def check_input(cls, value: str | list) -> str | list:
        if isinstance(value, str) and not value.strip(JSON_SCHEMA_SPACE):
            raise ValueError("the input is empty; send the text to answer")
        if not value:
            raise ValueError("the input has no items; send the conversation to answer")
        return value

    @field_validator("max_output_tokens")
    @classmethod
    def check_max_output_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def check_logprobs(self) -> ResponseRequest:
        if self.top_logprobs and not self.logprobs():
            raise ValueError(f"`top_logprobs` needs the logprobs included; add `include: [\"{LOGPROBS_INCLUDE}\"]` "
                             "or drop `top_logprobs`")
        return self

    @model_validator(mode="after")
    def check_tools(self) -> ResponseRequest:
        named = self.tool_choice.name if isinstance(self.tool_choice, ToolChoiceFunction) else None
        check_tool_rules([tool.name for tool in self.tools or ()], "function" if named else self.tool_choice, named,
                         "text.format" if self.structured_spec() is not None else None)
        if not isinstance(self.input, str):
            check_results_answer_calls(
                ([item.call_id] if isinstance(item, FunctionCallItem) else [],
                 item.call_id if isinstance(item, FunctionCallOutputItem) else None, f"input[{index}].call_id")
                for index, item in enumerate(self.input))
        return self

    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ())

    def tool_choice_mode(self) -> str:
        """`none` (no tools, or calls not asked for: the answer is text), `auto`, `required` or `function`."""
        if not self.tools:
            return "none"
        if isinstance(self.tool_choice, ToolChoiceFunction):
            return "function"
        return self.tool_choice or "auto"

    def messages(self) -> list[dict]:
        """The conversation as chat messages (vLLM's shapes): the instructions as a system message first, then the
        input. A call sent back joins the assistant message before it (the text it came with, or the calls before
        it), as vLLM's Responses API merges them; a call's output is a `tool` message."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        for item in self.input:
            if isinstance(item, FunctionCallItem):
                if messages and messages[-1]["role"] == "assistant":
                    messages[-1].setdefault("tool_calls", []).append(item.template_call())
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [item.template_call()]})
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "content": item.output, "tool_call_id": item.call_id})
            else:
                messages.append({"role": item.role, "content": item.text()})
        return messages

    def template_tools(self) -> tuple[dict, ...] | None:
        """The tools as the chat template gets them (chat's shape); None without any."""
        return tuple(tool.template_tool() for tool in self.tools) if self.tools else None

    def structured_spec(self) -> dict | None:
        """The answer's constraint as vLLM's `structured_outputs` object; None for free text."""
        text_format = self.text.format if self.text is not None else None
        return text_format.structured_outputs() if text_format is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Responses


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = Field(default_factory=list)
    logprobs: list[TokenLogprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cache_write_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """OpenAI's `response`: the request's settings echoed, the output, its status and usage."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputMessage | ResponseFunctionToolCall] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    store: bool = Field(default=False, description="always false: kdgate stores no response")
    temperature: float | None = None
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    # the request's tools and choice as it sent them (dicts: the request's models are its own in the OpenAPI
    # document, where a response's serialisation of them would take their names)
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    # --- kdgate extensions ---
    kdgate: RouteInfo | None = Field(default=None, exclude_if=_none)


class ResponseStreamEvent(BaseModel):
    """One server-sent event's `data` (its `event:` line names the same type): `response.created`, ...,
    `response.output_text.delta`, ..., `response.completed`, or `error` and `response.failed`."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
