"""The language of tool calls: what `auto`, `required` and a named function let an answer be, the remainder a
handoff gives the teacher inside a call, and a parameters schema kdgate cannot enforce refused at its place."""

from __future__ import annotations

import time

import pytest

from gateway.tools.grammar import ToolChoice, call_regex
from runtime.errors import InvalidRequest

ORDER = {"type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_number"], "additionalProperties": False}
CALLS = (("lookup_order", call_regex("lookup_order", ORDER, "tools[0].function.parameters")),
         ("ping", call_regex("ping", None, "tools[1].function.parameters")))
LOOKUP = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "36010"}}\n</tool_call>'
PING = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'


@pytest.mark.parametrize(("choice", "function", "parallel", "accepted", "refused"), [
    ("auto", None, True, ["", "plain text", "x < y", LOOKUP, "Checking. " + LOOKUP, LOOKUP + "\n" + PING],
     [LOOKUP + " and more text", "<tool_call>\n{}", LOOKUP.replace("36010", "3601")]),
    ("required", None, True, [LOOKUP, PING, LOOKUP + "\n" + PING], ["", "text", "Checking. " + LOOKUP]),
    ("required", None, False, [LOOKUP, PING], [LOOKUP + "\n" + PING]),
    ("function", "ping", True, [PING], [LOOKUP, PING + "\n" + PING, "text"]),
])
def test_what_each_choice_lets_the_answer_be(choice, function, parallel, accepted, refused):
    language = ToolChoice(CALLS, choice, function, parallel).constraint()
    assert [text for text in accepted if not language.accepts(text)] == []
    assert [text for text in refused if language.accepts(text)] == []


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_max_calls_bounds_the_calls(choice):
    language = ToolChoice(CALLS, choice, max_calls=2).constraint()
    assert language.accepts(LOOKUP) and language.accepts(LOOKUP + "\n" + PING)
    assert not language.accepts("\n".join([LOOKUP, PING, PING]))
    assert ToolChoice(CALLS, choice, max_calls=1).constraint().structured_outputs == \
        ToolChoice(CALLS, choice, parallel=False).constraint().structured_outputs


def test_a_bound_whose_grammar_is_too_big_is_refused_saying_how_far_to_lower_it():
    with pytest.raises(InvalidRequest, match=r"lower it to at most \d+") as raised:
        ToolChoice(CALLS, "required", max_calls=1000).constraint()
    assert raised.value.parameter == "max_tool_calls"


def test_a_free_form_tool_compiles_in_seconds():
    """Found by fuzzing /v1/responses: a tool whose parameters are any object took 27 s under `required` and 40 s
    under `auto` (its one-call automaton built again for each copy of the call, unreduced), so a few such requests
    held every worker thread and the next requests hung; now each call's automaton is built once, reduced."""
    free_form = (("notes", call_regex("notes", {"type": "object"}, "tools[0].function.parameters")),)
    started = time.monotonic()
    for choice in ("required", "auto"):
        language = ToolChoice(free_form, choice).constraint()
        assert language.accepts('<tool_call>\n{"name": "notes", "arguments": {"a": [1, {"b": null}]}}\n</tool_call>')
    assert time.monotonic() - started < 20


def test_a_handoff_inside_the_arguments_gives_the_teacher_only_the_rest_of_the_call():
    language = ToolChoice(CALLS, "auto").constraint()
    cut = LOOKUP.index("36010") + 2
    rest = language.after("Checking. " + LOOKUP[:cut])["grammar"]
    assert rest != language.structured_outputs["grammar"]
    assert language.automaton.allows(language.automaton.walk("Checking. " + LOOKUP[:cut]), LOOKUP[cut:])
    assert not language.automaton.allows(language.automaton.walk("Checking. " + LOOKUP[:cut]), 'x"}}')


def test_under_auto_a_format_for_the_answer_joins_the_calls():
    language = ToolChoice(CALLS, "auto").constraint({"json": {"type": "object", "properties": {
        "ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}})
    assert language.accepts('{"ok": true}') and language.accepts(LOOKUP)
    assert not language.accepts("plain text")


def test_a_grammar_cannot_join_the_calls():
    with pytest.raises(InvalidRequest, match="cannot be combined") as raised:
        ToolChoice(CALLS, "auto").constraint({"grammar": 'root ::= "x"'})
    assert raised.value.parameter == "structured_outputs.grammar"


def test_a_parameters_keyword_that_cannot_be_enforced_is_refused_at_its_place():
    schema = {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}}
    with pytest.raises(InvalidRequest) as raised:
        call_regex("refund", schema, "tools[2].function.parameters")
    assert raised.value.parameter == "tools[2].function.parameters.properties.amount.minimum"


def test_counted_repetitions_are_bounded_per_tool_and_over_all_tools():
    with pytest.raises(InvalidRequest, match="counted repetitions") as raised:
        call_regex("f", {"type": "string", "maxLength": 100_000}, "tools[0].function.parameters")
    assert raised.value.parameter == "tools[0].function.parameters"
    wide = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 300}}}
    calls = tuple((f"f{index}", call_regex(f"f{index}", wide, f"tools[{index}]")) for index in range(3))
    with pytest.raises(InvalidRequest, match="counted repetitions") as raised:
        ToolChoice(calls, "required").constraint()
    assert raised.value.parameter == "tools"
