"""Structured outputs on the wire: OpenAI's `response_format` and vLLM's `structured_outputs`, both turned into
vLLM's `structured_outputs` object (as vLLM itself turns `response_format` into it) for the backends.

`strict` is accepted either way: kdgate always constrains the answer by the whole schema, and refuses a schema
keyword it cannot enforce (runtime/constraints/schema_check.py) instead of loosening it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import InvalidRequest

SCHEMA_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for `json_schema.name`

# The validators' rules as JSON Schema, for the OpenAPI document and schema-driven tests. What no schema can state
# (that a regex, a grammar or a JSON schema compiles, and which schema keywords are enforced) is checked on use.
RESPONSE_FORMAT_RULE = {"anyOf": [  # `json_schema` with type `json_schema`, and only then
    {"properties": {"type": {"const": "json_schema"}, "json_schema": {"type": "object"}}, "required": ["json_schema"]},
    {"properties": {"type": {"enum": ["text", "json_object"]}, "json_schema": {"type": "null"}}}]}
KIND_VALUES = {  # what each kind of constraint takes
    "json": {"anyOf": [{"type": "object"}, {"type": "string", "minLength": 1}]},
    "regex": {"type": "string", "minLength": 1},
    "choice": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    "grammar": {"type": "string", "pattern": r"\S"},
    "json_object": {"const": True},
}
STRUCTURED_OUTPUTS_RULE = {
    "anyOf": [  # exactly one kind of constraint: it, and the others absent or unset
        {"required": [kind], "properties": {other: KIND_VALUES[kind] if other == kind else
                                            {"enum": [False, None]} if other == "json_object" else {"type": "null"}
                                            for other in KIND_VALUES}}
        for kind in KIND_VALUES],
}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(pattern=SCHEMA_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text` (the default), `json_object` (any JSON object) or `json_schema` (a document of that schema)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=RESPONSE_FORMAT_RULE)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def structured_outputs(self) -> dict | None:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("`response_format.json_schema` is required with type `json_schema`; send "
                                 '`{"name": ..., "schema": {...}}`')
            return {"json": self.json_schema.schema_}
        if self.json_schema is not None:
            raise ValueError(f"`response_format.json_schema` goes with type `json_schema` only, not `{self.type}`")
        return {"json_object": True} if self.type == "json_object" else None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (`StructuredOutputsParams`): exactly one of `json`, `json_object`, `regex`,
    `choice`, `grammar`, with JSON's whitespace options."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=STRUCTURED_OUTPUTS_RULE)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = Field(default=False, json_schema_extra={"enum": [False]})  # refused
    whitespace_pattern: str | None = None

    def spec(self) -> dict:
        return self.model_dump(by_alias=True, exclude_defaults=True)


def constraint_spec(response_format: ResponseFormat | None, structured_outputs: StructuredOutputs | None
                    ) -> dict | None:
    """A request's constraint as vLLM's `structured_outputs` object (None for free text), from whichever of the
    two fields gives it; a ValueError (the request model's 400) for a contradiction."""
    formatted = response_format.structured_outputs() if response_format is not None else None
    if structured_outputs is None:
        return formatted
    if formatted is not None:
        raise ValueError("`structured_outputs` and `response_format` both constrain the answer; send one")
    if structured_outputs.disable_additional_properties:
        raise ValueError("`structured_outputs.disable_additional_properties` is not supported: kdgate never adds a "
                         "property that a schema's `properties` does not list; drop it and give `properties` "
                         "with `additionalProperties: false`")
    return structured_outputs.spec()


def placed(error: InvalidRequest, response_format: bool) -> InvalidRequest:
    """A schema error (parameter `schema...`, from runtime/constraints) named where the client put the schema."""
    parameter = error.parameter or ""
    if not parameter.startswith("schema"):
        return error
    where = ("response_format.json_schema.schema" if response_format else "structured_outputs.json") + (
        parameter.removeprefix("schema"))
    return InvalidRequest(str(error).replace(f"`{parameter}`", f"`{where}`"), parameter=where)
