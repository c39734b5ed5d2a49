"""A request's `structured_outputs` (vLLM 0.32's `StructuredOutputsParams`) checked and turned into one grammar.

The object holds exactly one constraint: `json` (a JSON schema, a dict or its JSON text), `regex`, `choice` (a list
of strings), `grammar` (xgrammar's EBNF, or Lark, told apart as vLLM does) or `json_object: true`. The checks are
vLLM's (`SamplingParams._validate_structured_outputs` and `validate_xgrammar_grammar`), so a request refused by one
backend is refused by the other; a choice becomes vLLM's EBNF alternation and `json_object` the schema
`{"type": "object"}`, so both compile the same grammar text. What vLLM would hand to another library than xgrammar
(`structural_tag`, schema keywords xgrammar cannot enforce) and the per-request whitespace options (vLLM 0.32
accepts them and ignores them: its xgrammar backend reads the server's flags) are refused with a 400 that says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from runtime.engine.schema_support import unsupported_feature
from runtime.errors import InvalidRequest

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")
OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
MAX_JSON_NESTING = 64  # vLLM's MAX_STRUCTURED_OUTPUT_JSON_NESTING: objects and arrays nested deeper are refused


@dataclass(frozen=True)
class GrammarSpec:
    """What to compile: `kind` is "json_schema", "regex", "ebnf" or "lark"; `source` its text; `parameter` the
    request field it came from, for error messages."""

    kind: str
    source: str
    parameter: str


def grammar_spec(structured_outputs: object) -> GrammarSpec:
    """The one grammar a `structured_outputs` object asks for; `InvalidRequest` naming the field when it is wrong."""
    if not isinstance(structured_outputs, dict):
        raise InvalidRequest("`structured_outputs` must be an object such as {\"json\": SCHEMA} or "
                             "{\"regex\": PATTERN}", parameter="structured_outputs")
    _refuse_what_vllm_would_not_do_with_xgrammar(structured_outputs)
    given = [name for name in CONSTRAINTS if structured_outputs.get(name) is not None]
    if len(given) != 1:
        raise InvalidRequest(
            f"`structured_outputs` must hold exactly one of {', '.join(f'`{name}`' for name in CONSTRAINTS)}; it "
            f"holds {', '.join(f'`{name}`' for name in given) if given else 'none'}", parameter="structured_outputs")
    name = given[0]
    return _SPEC_OF[name](structured_outputs[name], f"structured_outputs.{name}")


def _refuse_what_vllm_would_not_do_with_xgrammar(structured_outputs: dict) -> None:
    for key, value in structured_outputs.items():
        parameter = f"structured_outputs.{key}"
        if key == "structural_tag":
            if value is not None:
                raise InvalidRequest("`structured_outputs.structural_tag` is not supported; constrain the answer "
                                     "with `json`, `regex`, `choice` or `grammar`", parameter=parameter)
        elif key in OPTIONS:
            if value not in (None, False):
                raise InvalidRequest(
                    f"`{parameter}` is not supported per request: vLLM 0.32 accepts it and ignores it (its xgrammar "
                    "backend takes whitespace rules from the server's `--structured-outputs-config`), so honouring "
                    "it here would answer differently from vLLM; drop it", parameter=parameter)
        elif key not in CONSTRAINTS:
            raise InvalidRequest(f"`{parameter}` is not a structured-outputs field; use one of "
                                 f"{', '.join(CONSTRAINTS + OPTIONS)}", parameter=parameter)


def _json_spec(value: object, parameter: str) -> GrammarSpec:
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRequest(f"`{parameter}` cannot be an empty string; send a JSON schema", parameter=parameter)
        try:
            schema = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as error:
            raise InvalidRequest(f"`{parameter}` is not valid JSON ({error}); send a JSON schema",
                                 parameter=parameter) from error
        source = value
    elif isinstance(value, dict):
        schema, source = value, json.dumps(value)  # vLLM's text of a dict schema (key order kept)
    else:
        raise InvalidRequest(f"`{parameter}` must be a JSON schema: an object, or its JSON text",
                             parameter=parameter)
    if _nests_deeper_than(schema, MAX_JSON_NESTING):
        raise InvalidRequest(f"`{parameter}` is nested too deeply: objects and arrays may nest at most "
                             f"{MAX_JSON_NESTING} levels", parameter=parameter)
    feature = unsupported_feature(schema)
    if feature is not None:
        raise InvalidRequest(f"`{parameter}` uses {feature}, which xgrammar (the local engine's grammar library, "
                             "vLLM's default) cannot enforce; drop that keyword or check the answer yourself",
                             parameter=parameter)
    return GrammarSpec("json_schema", source, parameter)


def _json_object_spec(value: object, parameter: str) -> GrammarSpec:
    if value is not True:
        raise InvalidRequest(f"`{parameter}` must be true if set; omit `structured_outputs` to leave the answer "
                             "unconstrained", parameter=parameter)
    return GrammarSpec("json_schema", '{"type": "object"}', parameter)


def _regex_spec(value: object, parameter: str) -> GrammarSpec:
    if not isinstance(value, str):
        raise InvalidRequest(f"`{parameter}` must be a string (a regular expression)", parameter=parameter)
    if "\x00" in value:
        raise InvalidRequest(f"`{parameter}` must not contain a NUL character ('\\x00')", parameter=parameter)
    return GrammarSpec("regex", value, parameter)  # an empty pattern is valid: it allows only the end token


def _choice_spec(value: object, parameter: str) -> GrammarSpec:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"`{parameter}` must be a list of strings", parameter=parameter)
    if not value:
        raise InvalidRequest(f"`{parameter}` cannot be an empty list; give the answers allowed",
                             parameter=parameter)
    return GrammarSpec("ebnf", choice_as_grammar(value), parameter)


def _grammar_spec(value: object, parameter: str) -> GrammarSpec:
    if not isinstance(value, str):
        raise InvalidRequest(f"`{parameter}` must be a string (an EBNF or Lark grammar)", parameter=parameter)
    if not value.strip():
        raise InvalidRequest(f"`{parameter}` cannot be an empty string", parameter=parameter)
    return GrammarSpec("lark" if is_likely_lark(value) else "ebnf", value, parameter)


_SPEC_OF = {"json": _json_spec, "json_object": _json_object_spec, "regex": _regex_spec, "choice": _choice_spec,
            "grammar": _grammar_spec}


def choice_as_grammar(choices: list[str]) -> str:
    """vLLM's EBNF for a choice (`choice_as_grammar`): the choices as quoted alternatives of the root rule."""
    escapes = {"\\": r"\\", '"': r"\"", "\n": r"\n", "\r": r"\r", "\t": r"\t"}

    def escape(character: str) -> str:
        if character in escapes:
            return escapes[character]
        if ord(character) < 0x20 or ord(character) == 0x7F:
            return f"\\u{ord(character):04x}"
        return character

    return "root ::= " + " | ".join('"' + "".join(escape(c) for c in choice) + '"' for choice in choices)


def is_likely_lark(grammar: str) -> bool:
    """vLLM's test (`grammar_is_likely_lark`): EBNF defines its rules with `::=`, Lark does not."""
    for line in grammar.split("\n"):
        if "::=" in re.sub(r"(#|//).*$", "", line).strip():
            return False
    return True


def _nests_deeper_than(document: object, limit: int) -> bool:
    """Whether objects and arrays in `document` nest more than `limit` levels (vLLM's `_exceeds_json_nesting`)."""
    level = [document]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list))]
        if not level:
            return False
    return True
