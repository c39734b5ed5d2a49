"""Tools on the chat API's wire, in OpenAI's shapes: the request's `tools` and `tool_choice`, the calls of an
assistant message (in a request's history and in an answer), and their streamed deltas.

Function tools only: OpenAI's `custom` tools (free-form text input) and `allowed_tools` choices are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for a function's name


def _none(value: Any) -> bool:
    return value is None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: a function without parameters
    strict: bool | None = None  # accepted either way: every call kdgate returns is a document of `parameters`


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionDefinition

    @model_validator(mode="before")
    @classmethod
    def check_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(f"tools of type {value.get('type')!r} are not supported: kdgate calls functions "
                             '(`{"type": "function", "function": {"name": ..., "parameters": {...}}}`)')
        return value


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str


class NamedToolChoice(BaseModel):
    """Call this function (and only it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionName

    @model_validator(mode="before")
    @classmethod
    def check_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(f"a `tool_choice` of type {value.get('type')!r} is not supported; use `none`, `auto`, "
                             '`required` or `{"type": "function", "function": {"name": ...}}`')
        return value


ToolChoiceField = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class RequestFunctionCall(FunctionCall):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("arguments")
    @classmethod
    def check_arguments(cls, value: str) -> str:
        return json_arguments(value)


def json_arguments(value: str) -> str:
    """A call's arguments sent back: JSON text (the chat template is given them parsed)."""
    try:
        json.loads(value)
    except ValueError:
        raise ValueError("the arguments of a call must be JSON text, as the model wrote them (the chat template is "
                         "given them parsed)") from None
    return value


def check_tool_rules(names: list[str], asked: str | None, named: str | None, format_field: str | None) -> None:
    """The rules across a request's tool fields, a `ValueError` naming the field for the first one broken: each
    function named once in `tools`; a `tool_choice` (`asked`: its mode, None when not sent) other than `none` only
    with tools; a named function (`named`) among them; no format for the answer (`format_field`: the field that
    gives it one, if any) when the answer is a call."""
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"`tools` names the function `{twice}` twice; give each function once")
    if asked not in (None, "none") and not names:
        raise ValueError("`tool_choice` needs `tools`: list the functions the model may call, or drop `tool_choice`")
    if named is not None and named not in names:
        raise ValueError(f"`tool_choice` names the function `{named}`, which `tools` does not have (it has "
                         f"{', '.join(f'`{name}`' for name in names)})")
    if asked in ("required", "function") and format_field is not None:
        raise ValueError(f"`{format_field}` cannot apply: under `tool_choice` {asked!r} the answer is a tool call; "
                         f"drop `{format_field}`, or use `tool_choice: auto` (the answer is then a call or a "
                         "document of the format)")


def check_results_answer_calls(turns: Iterable[tuple[Iterable[str], str | None, str]]) -> None:
    """Each tool result answers a call made before it in the conversation, a `ValueError` naming the field of the
    first that does not (OpenAI refuses those; a model given a result for no call is given nonsense). `turns` in
    order: (the ids of the calls the turn makes, the call id it answers or None, its field for the message)."""
    made: list[str] = []
    for calls, answers, field in turns:
        made.extend(calls)
        if answers is not None and answers not in made:
            known = f"the calls before it are {', '.join(f'`{call}`' for call in made)}" if made else \
                "no call comes before it"
            raise ValueError(f"`{field}` is `{answers}`, which answers no earlier call ({known}); send the call "
                             "before its result, with the same id")


class RequestToolCall(ToolCall):
    """A call in the history of a request (an earlier assistant message)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: RequestFunctionCall
    # the call's place in a stream, which the openai SDK's stream helpers keep on the message they assemble: a
    # client sends that message back as it is; accepted, and meaningless in a request
    index: int | None = Field(default=None, exclude=True)


class DeltaFunctionCall(BaseModel):
    name: str | None = Field(default=None, exclude_if=_none)
    arguments: str | None = Field(default=None, exclude_if=_none)


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = Field(default=None, exclude_if=_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_none)
    function: DeltaFunctionCall
