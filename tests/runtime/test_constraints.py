"""The gateway's structured-output languages (runtime/constraints): a document of the language validates against
the client's schema, the grammar written from any state is exactly the rest of the language (checked with
xgrammar, the library vLLM and the local engine compile it with), and what the grammar cannot enforce is refused
by name."""

from __future__ import annotations

import json
import math
import random

import jsonschema_rs
import pytest
import xgrammar

from distill.demo.task import ANSWER_SCHEMA
from runtime.constraints.automaton import Automaton, NotInLanguage
from runtime.constraints.languages import constraint
from runtime.errors import InvalidRequest

NESTED = {  # what pydantic writes for a model with a nested list of models and an optional field
    "$defs": {"Item": {"type": "object", "title": "Item",
                       "properties": {"name": {"type": "string", "maxLength": 12},
                                      "qty": {"type": "integer"},
                                      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
                       "required": ["name", "qty", "tags"], "additionalProperties": False}},
    "type": "object", "title": "Order",
    "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
                   "total": {"type": "number"},
                   "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
                   "rush": {"type": "boolean"}},
    "required": ["items", "total", "note", "rush"], "additionalProperties": False,
}
SCHEMAS = {"demo": ANSWER_SCHEMA, "nested": NESTED}


def documents(automaton: Automaton, count: int, seed: int = 0) -> list[str]:
    """Random documents of the language: random walks through the automaton, stopping at final states."""
    rng, found = random.Random(seed), []
    fsm = automaton.fsm
    named = [symbol for symbol in fsm.alphabet if isinstance(symbol, str)]
    while len(found) < count:
        state, text = fsm.initial, []
        for _ in range(400):
            if state in fsm.finals and (rng.random() < 0.3 or not fsm.map.get(state)):
                found.append("".join(text))
                break
            moves = [(transition, target) for transition, target in fsm.map.get(state, {}).items()
                     if target in automaton._live]
            transition, state = rng.choice(moves)
            chars = [symbol for symbol in fsm.alphabet.by_transition[transition] if isinstance(symbol, str)]
            if len(chars) < len(fsm.alphabet.by_transition[transition]):  # includes "anything else"
                chars += [char for char in "éxZ~\u4e2d" if char not in named]
            text.append(rng.choice(chars))
    return found


def finite(text: str) -> float:
    """JSON's numbers have no bound, Python's floats do: 4e+400 is a valid number, not infinity."""
    value = float(text)
    return value if math.isfinite(value) else 1.0


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_document_of_a_schemas_language_validates_against_the_schema(name):
    schema = SCHEMAS[name]
    language = constraint({"json": schema})
    validator = jsonschema_rs.validator_for(schema)
    for document in documents(language.automaton, 300):
        assert validator.is_valid(json.loads(document, parse_float=finite)), document


def test_a_schemas_language_takes_valid_documents_and_not_invalid_ones():
    language = constraint({"json": ANSWER_SCHEMA})
    assert language.accepts('{"queue": "billing", "priority": "P2", "reply": "Hi \\"Ana\\", \u00e9"}')
    for invalid in ('{"queue": "kitchen", "priority": "P2", "reply": "x"}', '{"queue": "billing", "reply": "x"}',
                    '{"queue": "billing", "priority": "P2", "reply": "x", "extra": 1}', '["billing"]'):
        assert not language.accepts(invalid), invalid


@pytest.fixture(scope="module")
def compiler() -> xgrammar.GrammarCompiler:
    """xgrammar over a byte-level vocabulary: every string is one of its token sequences."""
    vocabulary = [bytes([byte]).decode("latin-1") for byte in range(256)] + ["</s>"]
    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo(vocabulary, stop_token_ids=[256]))


def grammar_takes(compiler, grammar: str, text: str) -> bool:
    matcher = xgrammar.GrammarMatcher(compiler.compile_grammar(grammar))
    return matcher.accept_string(text) and matcher.is_completed() if text else matcher.is_completed()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_grammar_from_any_point_of_a_document_is_its_rest(compiler, name):
    """What the teacher is given after a handoff: at every split of a document the grammar written from the
    automaton's state takes the document's rest, and not a rest that breaks it."""
    language = constraint({"json": SCHEMAS[name]})
    assert grammar_takes(compiler, language.structured_outputs["grammar"], documents(language.automaton, 1)[0])
    for document in documents(language.automaton, 4, seed=1):
        for cut in range(0, len(document), 3):
            rest = language.after(document[:cut])["grammar"]
            assert grammar_takes(compiler, rest, document[cut:]), (document[:cut], document[cut:])
            assert not grammar_takes(compiler, rest, document[cut:] + "}")
            assert not grammar_takes(compiler, rest, "\u0001" + document[cut:])


def test_a_text_that_no_document_starts_with_has_no_rest():
    language = constraint({"json": ANSWER_SCHEMA})
    with pytest.raises(NotInLanguage):
        language.after('{"queue": "kitchen')
    with pytest.raises(NotInLanguage):
        constraint({"grammar": 'root ::= "a"'}).after("")


def test_choice_regex_and_json_object_are_languages_too():
    choice = constraint({"choice": ["a.b (x)", "c|d"]})
    assert choice.accepts("a.b (x)") and choice.accepts("c|d") and not choice.accepts("axb (x)")
    assert constraint({"regex": r"^\d{3}-[a-z]+$"}).accepts("123-ab")  # anchors say nothing more
    anything = constraint({"json_object": True})
    assert anything.accepts('{"a": [1, {"b": null}], "c": -1.5e+3}') and not anything.accepts("[1]")
    assert not constraint({"json": ANSWER_SCHEMA, "disable_any_whitespace": True}).accepts(
        '{"queue": "billing", "priority": "P2", "reply": "x"}')


@pytest.mark.parametrize(("schema", "parameter"), [
    ({"type": "integer", "minimum": 1}, "schema.minimum"),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}]}}}, "schema.properties.a.oneOf"),
    ({"type": "array", "items": {"type": "string", "format": "ipv4"}}, "schema"),
    ({"$defs": {"A": {"type": "array", "uniqueItems": True}}}, "schema.$defs.A.uniqueItems"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "schema.patternProperties"),
    ({"enum": []}, "schema"),  # no document at all: the answer would have been empty
    ({"anyOf": []}, "schema"),
    ({"type": "string", "pattern": "(("}, "schema"),
    # a worker thread spent 20 s building this automaton; refused up front
    ({"type": "string", "maxLength": 3000}, "schema"),
])
def test_a_schema_keyword_the_grammar_cannot_enforce_is_refused_by_name(schema, parameter):
    with pytest.raises(InvalidRequest) as refused:
        constraint({"json": schema})
    assert refused.value.parameter == parameter


@pytest.mark.parametrize(("spec", "parameter"), [
    ({"regex": "(?<=a)b"}, "structured_outputs.regex"), ({"choice": []}, "structured_outputs.choice"),
    ({"json": "{nope"}, "structured_outputs.json"), ({"regex": "a", "choice": ["b"]}, "structured_outputs"),
    ({"structural_tag": "{}"}, "structured_outputs.structural_tag"), ({"grammar": " "}, "structured_outputs.grammar"),
    ({"regex": "a{99999}"}, "structured_outputs.regex"),
])
def test_a_malformed_constraint_is_refused_by_name(spec, parameter):
    with pytest.raises(InvalidRequest) as refused:
        constraint(spec)
    assert refused.value.parameter == parameter


ONE_DOCUMENT = '{"queue": "billing", "priority": "P2", "reply": "ok"}'


def test_allows_says_which_tokens_a_grammar_mask_lets_through_at_a_state():
    """At each point of an answer, a token is allowed when the language goes on with its text: the same judgement
    the backends' grammar mask makes, which the shadow worker applies to the teacher's unconstrained scores."""
    automaton = constraint({"json": ANSWER_SCHEMA}).automaton
    start = automaton.walk("")
    assert automaton.allows(start, "{") and automaton.allows(start, '{"') and not automaton.allows(start, "Sure")
    inside = automaton.walk('{"queue": "bil')
    assert automaton.allows(inside, "ling") and not automaton.allows(inside, "lion")
    assert not automaton.allows(inside, "") and automaton.allows(automaton.walk(ONE_DOCUMENT), "")
    assert not automaton.allows(automaton.walk(ONE_DOCUMENT), "}")  # nothing comes after a whole document
