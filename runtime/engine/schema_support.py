"""JSON-schema keywords that xgrammar 0.2.8 does not enforce, as vLLM 0.32 lists them
(vllm/v1/structured_output/backend_xgrammar.py `has_xgrammar_unsupported_json_features`).

xgrammar compiles such a schema but ignores the keyword (`multipleOf`) or enforces something looser (a multi-branch
`allOf`), so the answer could break the schema the client sent. vLLM's `auto` backend sends these schemas to
llguidance instead; the local engine has xgrammar only, so it refuses them and says which keyword is at fault.
"""

from __future__ import annotations

from typing import Any

# The `format`s xgrammar's JSON-schema converter implements (vLLM's STRING_SUPPORTED_FORMATS).
STRING_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri", "uri-reference",
    "uri-template", "json-pointer", "relative-json-pointer",
})


def unsupported_feature(schema: Any) -> str | None:
    """What in `schema` (or a schema nested in it) xgrammar cannot enforce, in words; None when it can all be."""
    if not isinstance(schema, dict):
        return None
    found = _unsupported_here(schema)
    if found is not None:
        return found
    for value in schema.values():
        nested = value if isinstance(value, list) else [value]
        for item in nested:
            found = unsupported_feature(item) if isinstance(item, dict) else None
            if found is not None:
                return found
    return None


def _unsupported_here(schema: dict) -> str | None:
    """vLLM's checks on one schema object, in its order."""
    types = _types(schema)
    if types & {"integer", "number"} and "multipleOf" in schema:
        return "`multipleOf` on a number"
    if "array" in types:
        for keyword in ("uniqueItems", "contains", "minContains", "maxContains"):
            if keyword in schema:
                return f"`{keyword}` on an array"
    if "string" in types and "format" in schema and schema["format"] not in STRING_FORMATS:
        return f"the string format `{schema['format']}` (supported: {', '.join(sorted(STRING_FORMATS))})"
    if "string" in types and _pattern_with_length(schema):
        return "a string `pattern` or `format` together with `minLength`/`maxLength`"
    if "object" in types and "propertyNames" in schema:
        found = _property_names_clash(schema)
        if found is not None:
            return found
    if "object" in types and isinstance(schema.get("patternProperties"), dict):
        if "properties" in schema:
            return "`patternProperties` together with `properties`"
        if len(schema["patternProperties"]) > 1:
            return "more than one `patternProperties` pattern"
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) >= 2:
        return "an `allOf` with more than one branch"
    return None


def _property_names_clash(schema: dict) -> str | None:
    names = schema.get("propertyNames")
    if isinstance(names, dict) and _pattern_with_length(names):
        return "`propertyNames` with a `pattern`/`format` and a length bound"
    for keyword in ("patternProperties", "properties"):
        if keyword in schema:
            return f"`propertyNames` together with `{keyword}`"
    if schema.get("unevaluatedProperties", True) is not True:
        return "`propertyNames` together with `unevaluatedProperties`"
    return None


def _types(schema: dict) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {item for item in kind if isinstance(item, str)}
    return set()


def _pattern_with_length(schema: dict) -> bool:
    return ("pattern" in schema or "format" in schema) and ("minLength" in schema or "maxLength" in schema)
