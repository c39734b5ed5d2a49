"""A request's `structured_outputs` checked as vLLM 0.32 checks it and turned into the grammar text vLLM compiles;
what vLLM would not compile with xgrammar, or would ignore, is a 400 naming the field."""

from __future__ import annotations

import json

import pytest
import xgrammar

from runtime.engine.schema_support import unsupported_feature
from runtime.engine.structured_outputs import GrammarSpec, choice_as_grammar, grammar_spec, is_likely_lark
from runtime.errors import InvalidRequest

SCHEMA = {"type": "object", "properties": {"queue": {"enum": ["billing", "returns"]}, "reply": {"type": "string"}},
          "required": ["queue", "reply"], "additionalProperties": False}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("constraint, expected", [
    ({"json": SCHEMA}, GrammarSpec("json_schema", json.dumps(SCHEMA), "structured_outputs.json")),
    ({"json": '{"type": "integer"}'}, GrammarSpec("json_schema", '{"type": "integer"}', "structured_outputs.json")),
    ({"json_object": True}, GrammarSpec("json_schema", '{"type": "object"}', "structured_outputs.json_object")),
    ({"regex": "P[1-4]"}, GrammarSpec("regex", "P[1-4]", "structured_outputs.regex")),
    ({"regex": ""}, GrammarSpec("regex", "", "structured_outputs.regex")),  # vLLM: valid, allows only the end
    ({"choice": ["a", "b"]}, GrammarSpec("ebnf", 'root ::= "a" | "b"', "structured_outputs.choice")),
    ({"grammar": 'root ::= "x"'}, GrammarSpec("ebnf", 'root ::= "x"', "structured_outputs.grammar")),
    ({"grammar": 'start: "x"'}, GrammarSpec("lark", 'start: "x"', "structured_outputs.grammar")),
    ({"regex": "x", "json": None, "disable_any_whitespace": False, "whitespace_pattern": None,
      "disable_additional_properties": False, "structural_tag": None},
     GrammarSpec("regex", "x", "structured_outputs.regex")),  # vLLM's full object at its defaults
], ids=lambda value: next(iter(value)) if isinstance(value, dict) else "")
def test_each_constraint_becomes_the_grammar_vllm_compiles(constraint, expected):
    assert grammar_spec(constraint) == expected


@pytest.mark.parametrize("constraint, parameter, words", [
    ("json", "structured_outputs", "must be an object"),
    ({}, "structured_outputs", "holds none"),
    ({"regex": "a", "choice": ["a"]}, "structured_outputs", "holds `regex`, `choice`"),
    ({"structural_tag": "{}"}, "structured_outputs.structural_tag", "not supported"),
    ({"regex": "a", "guided_regex": "b"}, "structured_outputs.guided_regex", "not a structured-outputs field"),
    ({"json_object": True, "disable_any_whitespace": True}, "structured_outputs.disable_any_whitespace", "ignores"),
    ({"json_object": True, "whitespace_pattern": "[ ]?"}, "structured_outputs.whitespace_pattern", "ignores"),
    ({"json_object": True, "disable_additional_properties": True}, "structured_outputs.disable_additional_properties",
     "ignores"),
    ({"json": ""}, "structured_outputs.json", "empty string"),
    ({"json": "{not json"}, "structured_outputs.json", "not valid JSON"),
    ({"json": [1, 2]}, "structured_outputs.json", "an object, or its JSON text"),
    ({"json": nested(65)}, "structured_outputs.json", "nested too deeply"),
    ({"json": {"type": "integer", "multipleOf": 3}}, "structured_outputs.json", "`multipleOf`"),
    ({"json": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}},
     "structured_outputs.json", "`uniqueItems`"),
    ({"json": {"type": "string", "format": "color"}}, "structured_outputs.json", "format `color`"),
    ({"json": {"type": "string", "pattern": "a+", "maxLength": 3}}, "structured_outputs.json", "`pattern`"),
    ({"json": {"allOf": [{"type": "string"}, {"enum": ["yes"]}]}}, "structured_outputs.json", "`allOf`"),
    ({"json_object": False}, "structured_outputs.json_object", "must be true"),
    ({"regex": 5}, "structured_outputs.regex", "must be a string"),
    ({"regex": "a\x00"}, "structured_outputs.regex", "NUL"),
    ({"choice": []}, "structured_outputs.choice", "empty list"),
    ({"choice": "billing"}, "structured_outputs.choice", "list of strings"),
    ({"grammar": "  "}, "structured_outputs.grammar", "empty string"),
])
def test_what_vllm_refuses_or_would_not_do_with_xgrammar_is_a_400_naming_the_field(constraint, parameter, words):
    with pytest.raises(InvalidRequest) as refused:
        grammar_spec(constraint)
    assert refused.value.parameter == parameter
    assert words in refused.value.message


def test_a_schema_nested_to_the_limit_is_accepted():
    assert grammar_spec({"json": nested(63)}).kind == "json_schema"  # 63 arrays and the string: 64 levels


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}},
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "array", "contains": {"type": "string"}}]}}},
    {"type": "object", "propertyNames": {"pattern": "^a"}, "properties": {"a": {"type": "string"}}},
    {"type": "object", "patternProperties": {"^a": {}, "^b": {}}},
])
def test_an_unsupported_keyword_is_found_at_any_depth(schema):
    assert unsupported_feature(schema) is not None


def test_the_demo_schema_and_the_supported_formats_are_enforceable():
    schema = SCHEMA | {"properties": SCHEMA["properties"] | {"at": {"type": "string", "format": "date-time"}}}
    assert unsupported_feature(schema) is None


@pytest.mark.parametrize("choices", [["billing", "P1"], ['say "hi"', "back\\slash", "tab\there", "nl\nend", "\x01"]])
def test_choices_compile_to_an_ebnf_grammar_that_accepts_exactly_them(choices):
    grammar = xgrammar.Grammar.from_ebnf(choice_as_grammar(choices))
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([])).compile_grammar(grammar)
    for choice in choices:
        matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
        assert matcher.accept_string(choice) and matcher.is_terminated()
    assert not xgrammar.GrammarMatcher(compiled).accept_string("neither")


def test_choice_escaping_is_vllms():
    assert choice_as_grammar(['a"b', "c\\d", "e\nf", "\x7f"]) == r'root ::= "a\"b" | "c\\d" | "e\nf" | "\u007f"'


@pytest.mark.parametrize("grammar, lark", [
    ('root ::= "a"', False), ('start: "a"', True), ('# a comment with ::=\nstart: "a"', True),
    ('// rule ::= in a comment\nroot ::= "a"', False),
])
def test_lark_is_told_from_ebnf_as_vllm_tells_them(grammar, lark):
    assert is_likely_lark(grammar) is lark
