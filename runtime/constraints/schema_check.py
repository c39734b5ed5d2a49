"""Which JSON Schema keywords kdgate's grammar enforces, and a 400 naming any other.

outlines-core writes a schema as a regex and skips what a regex cannot say (numeric bounds, `uniqueItems`,
`oneOf`'s exclusivity, `contains`, ...): an answer would then pass the grammar and fail the client's validator. Such
a keyword is refused with its place in the schema, so the client can drop it and check it after parsing.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidRequest

ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum", "const", "anyOf",
    "$ref", "$defs", "definitions", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "minProperties", "maxProperties",
})
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly",
})
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("prefixItems", "anyOf")


def check_schema(schema: Any, path: str = "schema") -> None:
    """Raise `InvalidRequest` (parameter: the keyword's path, `schema.properties.age.minimum`) at the first keyword
    the grammar would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(f"`{path}` must be a JSON schema (an object), got {type(schema).__name__}",
                             parameter=path)
    for keyword, value in schema.items():
        where = f"{path}.{keyword}"
        if keyword in ANNOTATIONS:
            continue
        if keyword not in ENFORCED:
            raise InvalidRequest(f"`{where}`: kdgate's grammar cannot enforce `{keyword}`, so an answer could break "
                                 f"it; drop `{keyword}` and check it after parsing (docs/api.md lists the keywords "
                                 "kdgate enforces)", parameter=where)
        if keyword in SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{where}.{name}")
        elif keyword in SUBSCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                check_schema(sub, f"{where}[{index}]")
        elif keyword in ("items", "additionalProperties") and isinstance(value, dict | bool):
            check_schema(value, where)
