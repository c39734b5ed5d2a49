"""Tools on the Responses API's wire, in OpenAI's shapes (`openai.types.responses`): function tools (flat, `name`
beside `type`), `tool_choice`, the `function_call` and `function_call_output` items of a conversation sent back, and
the `function_call` items of an answer.

The calls themselves are chat's (gateway/tools): the same grammar, parsing and chat-template messages. Function tools
only: kdgate serves a model that writes calls for the client to run, so OpenAI's hosted tools (web search, file
search, MCP, code interpreter, ...) and custom tools are refused by their type, and so are the `tool_choice` forms
that name them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from gateway.tools.protocol import FUNCTION_NAME, json_arguments

CHOICE_MODES = ("none", "auto", "required")
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class FunctionToolParam(BaseModel):
    """`{"type": "function", "name", "description", "parameters", "strict"}`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # `type` first (OpenAI lists it fourth): a tool of another type is refused by its type, before its other keys
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: a function without parameters
    strict: bool | None = None  # accepted either way: every call kdgate returns is a document of `parameters`

    @model_validator(mode="before")
    @classmethod
    def check_shape(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") == "function" and "function" in value:
            raise ValueError("the Responses API's function tools are flat: send `{\"type\": \"function\", \"name\": "
                             "..., \"parameters\": {...}}` (chat's `function` object is not nested here)")
        return value

    @field_validator("type", mode="before")
    @classmethod
    def check_type(cls, value: Any) -> Any:
        if value != "function":
            raise ValueError(f"tools of type {value!r} are not supported: kdgate serves a model that calls functions "
                             "you run, and runs no tools itself (web search, file search, MCP, code interpreter, "
                             "custom tools, ...); drop the tool, or describe it as a `function` tool and run it "
                             "yourself")
        return value

    def template_tool(self) -> dict:
        """The tool as the chat template gets it (chat's shape, as vLLM's Responses API hands it over)."""
        return {"type": "function", "function": self.model_dump(exclude={"type"}, exclude_none=True)}


class ToolChoiceFunction(BaseModel):
    """`{"type": "function", "name": ...}`: call this function, and only it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str

    @field_validator("type", mode="before")
    @classmethod
    def check_type(cls, value: Any) -> Any:
        if value != "function":
            raise ValueError(f"a `tool_choice` of type {value!r} is not supported: kdgate calls functions only; "
                             'use `none`, `auto`, `required` or `{"type": "function", "name": ...}`')
        return value


# A mode or a named function, told apart by the value's type, so that an error names the branch the client meant.
# The tags are names `dotted` leaves out.
ToolChoiceField = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("choice[mode]")]
    | Annotated[ToolChoiceFunction, Tag("choice[function]")],
    Discriminator(lambda value: "choice[mode]" if isinstance(value, str) else "choice[function]")]


class FunctionCallItem(BaseModel):
    """A call of an earlier answer, sent back in `input`: the assistant's `tool_calls` for the chat template."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    id: str | None = None  # an output item sent back keeps its id and status: accepted, not read
    status: ItemStatus | None = None

    @field_validator("arguments")
    @classmethod
    def check_arguments(cls, value: str) -> str:
        return json_arguments(value)

    def template_call(self) -> dict:
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class FunctionCallOutputItem(BaseModel):
    """What the client's function returned for a call: a `tool` message for the chat template."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: ItemStatus | None = None

    @field_validator("output", mode="before")
    @classmethod
    def check_output(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("send the function's output as a string: kdgate serves text models, and takes no "
                             "content parts (images, files) in a function's output")
        return value


class ResponseFunctionToolCall(BaseModel):
    """A `function_call` output item: one call of the answer."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text
    status: ItemStatus
