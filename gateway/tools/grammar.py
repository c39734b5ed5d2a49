"""The language of an answer's tool calls, in the hermes format (gateway/tools/calls.py), as one regular expression
over the tools' parameter schemas: the constraint of `tool_choice: required` and of a named function, and under
`auto` the grammar a handoff inside a call gives the teacher for the rest of it.

Each call is `<tool_call>\\n{"name": "<name>", "arguments": <a document of the tool's parameters>}\\n</tool_call>`;
parallel calls follow each other, a newline apart, as the template writes them. The parameters' schema is held to
the keywords kdgate enforces (a keyword it cannot is a 400 naming its place in `tools`), like `response_format`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import interegular
from interegular.fsm import FSM
from outlines_core.json_schema import build_regex_from_schema

from runtime.constraints.automaton import Automaton
from runtime.constraints.languages import CACHED_LANGUAGES, Constraint, check_size, constraint
from runtime.constraints.schema_check import check_schema
from runtime.errors import InvalidRequest

NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
# A bound of n calls (`max_tool_calls`) is n copies of one call's automaton, and reducing the whole grows faster than
# its size (two small tools under `auto`: 8 copies 0.8 s, 16 copies 2.3 s, 21 copies 3.7 s): the copies' states are
# bounded up front, as runtime.constraints.languages bounds a schema's counted repetitions.
MAX_BOUNDED_STATES = 3000


def call_regex(name: str, parameters: dict | None, where: str) -> str:
    """One call of the tool `name`; `where` names its parameters in the request (`tools[0].function.parameters`)."""
    schema = parameters if parameters is not None else NO_PARAMETERS
    check_schema(schema, where)
    try:
        arguments = build_regex_from_schema(json.dumps(schema), None)
    except (ValueError, TypeError) as error:
        raise InvalidRequest(f"`{where}` cannot be turned into a grammar: {str(error).splitlines()[0]}",
                             parameter=where) from None
    check_size(arguments, where)
    head = re.escape('{"name": ' + json.dumps(name) + ', "arguments": ')
    return f"<tool_call>\\n{head}(?:{arguments})\\}}\\n</tool_call>"


def calls_fsm(calls: list[str], parallel: bool, max_calls: int | None = None) -> FSM:
    """One call of any of `calls` (their regexes), or with `parallel` one or more (at most `max_calls`), a newline
    apart. Each call's automaton is built from its regex once and reduced, then joined to the others: built from one
    regex of them all, the automaton of one free-form tool (`{"type": "object"}`, whose call alone takes 3.5 s) took
    27 s under `required` and 40 s under `auto` (`{}`: 84 s and minutes), blocking a worker thread each."""
    one = _one_of(calls)
    if not parallel or max_calls == 1:
        return one
    another = _fsm("\n").concatenate(one)
    if max_calls is None:
        return one.concatenate(another.star())
    return one.concatenate(*[another | _fsm("")] * (max_calls - 1))


def text_then_calls(calls: FSM) -> FSM:
    """`tool_choice: auto`: any text without a `<tool_call>` in it, then optionally calls (the text, then the calls
    it makes); a call started is finished well-formed."""
    text = interegular.parse_pattern(r"[\s\S]*<tool_call>[\s\S]*").to_fsm().everythingbut()
    return text.concatenate(calls | _fsm(""))


@dataclass(frozen=True)
class ToolChoice:
    """What a request asks of its tools: their calls' regexes (in `tools` order), `auto`, `required` or the name of
    the one function to call, whether calls may come several at once, and how many at most."""

    calls: tuple[tuple[str, str], ...]  # (name, regex of one call)
    choice: str  # "auto", "required" or "function"
    function: str | None = None
    parallel: bool = True
    tools: str = "[]"  # the tools (OpenAI's dicts) as JSON text: the constraint's spec, to compile it again from
    max_calls: int | None = None  # the Responses API's `max_tool_calls` (1 or more); None: no bound

    def constraint(self, answer: dict | None = None) -> Constraint:
        """The answer's language; under `auto` with a format for the answer (`answer`, a `structured_outputs`
        object), a document of the format or calls. Cached by content; blocking: call it off the event loop."""
        return _constraint(self, None if answer is None else json.dumps(answer))


@lru_cache(maxsize=CACHED_LANGUAGES)
def _constraint(choice: ToolChoice, answer: str | None) -> Constraint:
    try:
        fsm = _language(choice, answer)
    except InvalidRequest:
        raise
    except Exception as error:  # interegular's parse errors have no common base class
        raise InvalidRequest(f"a `pattern` in `tools` cannot be compiled ({type(error).__name__}: {error}); kdgate "
                             "takes regexes without lookaround or backreferences", parameter="tools") from None
    spec = {"tools": json.loads(choice.tools), "tool_choice": choice.choice, "function": choice.function,
            "parallel_tool_calls": choice.parallel, "answer": None if answer is None else json.loads(answer)}
    if choice.max_calls is not None:  # the Responses API's bound, kept for the shadow worker's compile
        spec["max_tool_calls"] = choice.max_calls
    return Constraint(spec, Automaton(fsm.reduce()))


def _language(choice: ToolChoice, answer: str | None) -> FSM:
    if choice.choice == "function":
        fsm = _call_fsm(next(regex for name, regex in choice.calls if name == choice.function))
    else:
        regexes = [regex for _, regex in choice.calls]
        check_size("|".join(regexes), "tools")  # each tool's is bounded; together they are too
        if choice.parallel and choice.max_calls is not None and choice.max_calls > 1:
            _check_bound(regexes, choice.max_calls)
        calls = calls_fsm(regexes, choice.parallel, choice.max_calls)
        if choice.choice == "required":
            fsm = calls
        elif answer is not None:
            fsm = calls | _answer_fsm(json.loads(answer))
        else:
            fsm = text_then_calls(calls)
    return fsm


def _check_bound(calls: list[str], max_calls: int) -> None:
    states = len(_one_of(calls).states)
    if states * max_calls > MAX_BOUNDED_STATES:
        raise InvalidRequest(f"`max_tool_calls` of {max_calls} makes the grammar of the calls too big for kdgate "
                             f"({states} states a call, {MAX_BOUNDED_STATES} in all); lower it to at most "
                             f"{max(MAX_BOUNDED_STATES // states, 1)}, or leave it out (the answer's token limit "
                             "still bounds the calls)", parameter="max_tool_calls")


def _answer_fsm(spec: dict) -> FSM:
    answer = constraint(spec)
    if answer.automaton is None:
        raise InvalidRequest("a `grammar` and `tools` cannot be combined: kdgate cannot join an EBNF grammar with "
                             "the language of tool calls; use a JSON schema, a regex or a choice, or set "
                             "`tool_choice: none`", parameter="structured_outputs.grammar")
    return answer.automaton.fsm


def tool_choice_of(tools: Sequence[dict], mode: str = "auto", function: str | None = None,
                   parallel: bool = True, max_calls: int | None = None,
                   where: str = "tools[{index}].function.parameters") -> ToolChoice:
    """The `ToolChoice` of OpenAI tool dicts (`{"type": "function", "function": {"name", "parameters"}}`); `where`
    places a tool's parameters in the request, `{index}` its place in `tools` (the Responses API's are flat:
    `tools[{index}].parameters`)."""
    calls = []
    for index, tool in enumerate(tools):
        name, parameters = tool["function"]["name"], tool["function"].get("parameters")
        calls.append((name, cached_call_regex(name, None if parameters is None else json.dumps(parameters),
                                              where.format(index=index))))
    return ToolChoice(tuple(calls), mode, function, parallel, json.dumps(list(tools)), max_calls)


def tool_constraint(spec: dict) -> Constraint:
    """A tool constraint compiled again from its spec (`Constraint.spec` of one: a shadow job's, a record's)."""
    choice = tool_choice_of(spec["tools"], spec["tool_choice"], spec.get("function"), spec["parallel_tool_calls"],
                            spec.get("max_tool_calls"))
    return choice.constraint(spec.get("answer"))


@lru_cache(maxsize=CACHED_LANGUAGES)
def cached_call_regex(name: str, parameters: str | None, where: str) -> str:
    """`call_regex`, for `parameters` as JSON text (clients send the same tools again and again)."""
    return call_regex(name, None if parameters is None else json.loads(parameters), where)


def _one_of(calls: list[str]) -> FSM:
    return FSM.union(*(_call_fsm(call) for call in calls)).reduce()


@lru_cache(maxsize=CACHED_LANGUAGES)
def _call_fsm(regex: str) -> FSM:
    """One call's automaton, reduced (the same tools come again and again, in other combinations)."""
    return _fsm(regex).reduce()


def _fsm(regex: str) -> FSM:
    return interegular.parse_pattern(regex).to_fsm()
