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


def calls_regex(calls: list[str], parallel: bool) -> str:
    """One call of any of `calls` (their regexes), or with `parallel` one or more, a newline apart."""
    one = "|".join(f"(?:{call})" for call in calls)
    return f"(?:{one})(?:\\n(?:{one}))*" if parallel else f"(?:{one})"


def text_then_calls(calls: str) -> FSM:
    """`tool_choice: auto`: any text without a `<tool_call>` in it, then optionally calls (the text, then the calls
    it makes); a call started is finished well-formed."""
    text = interegular.parse_pattern(r"[\s\S]*<tool_call>[\s\S]*").to_fsm().everythingbut()
    return text.concatenate(_fsm(calls) | _fsm(""))


@dataclass(frozen=True)
class ToolChoice:
    """What a request asks of its tools: their calls' regexes (in `tools` order), `auto`, `required` or the name of
    the one function to call, and whether calls may come several at once."""

    calls: tuple[tuple[str, str], ...]  # (name, regex of one call)
    choice: str  # "auto", "required" or "function"
    function: str | None = None
    parallel: bool = True
    tools: str = "[]"  # the tools (OpenAI's dicts) as JSON text: the constraint's spec, to compile it again from

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
    return Constraint(spec, Automaton(fsm.reduce()))


def _language(choice: ToolChoice, answer: str | None) -> FSM:
    if choice.choice == "function":
        fsm = _fsm(next(regex for name, regex in choice.calls if name == choice.function))
    else:
        calls = calls_regex([regex for _, regex in choice.calls], choice.parallel)
        check_size(calls, "tools")  # each tool's is bounded; together they are too
        if choice.choice == "required":
            fsm = _fsm(calls)
        elif answer is not None:
            fsm = _fsm(calls) | _answer_fsm(json.loads(answer))
        else:
            fsm = text_then_calls(calls)
    return fsm


def _answer_fsm(spec: dict) -> FSM:
    answer = constraint(spec)
    if answer.automaton is None:
        raise InvalidRequest("a `grammar` and `tools` cannot be combined: kdgate cannot join an EBNF grammar with "
                             "the language of tool calls; use a JSON schema, a regex or a choice, or set "
                             "`tool_choice: none`", parameter="structured_outputs.grammar")
    return answer.automaton.fsm


def tool_choice_of(tools: Sequence[dict], mode: str = "auto", function: str | None = None,
                   parallel: bool = True) -> ToolChoice:
    """The `ToolChoice` of OpenAI tool dicts (`{"type": "function", "function": {"name", "parameters"}}`)."""
    calls = []
    for index, tool in enumerate(tools):
        name, parameters = tool["function"]["name"], tool["function"].get("parameters")
        calls.append((name, cached_call_regex(name, None if parameters is None else json.dumps(parameters),
                                              f"tools[{index}].function.parameters")))
    return ToolChoice(tuple(calls), mode, function, parallel, json.dumps(list(tools)))


def tool_constraint(spec: dict) -> Constraint:
    """A tool constraint compiled again from its spec (`Constraint.spec` of one: a shadow job's, a record's)."""
    choice = tool_choice_of(spec["tools"], spec["tool_choice"], spec.get("function"), spec["parallel_tool_calls"])
    return choice.constraint(spec.get("answer"))


@lru_cache(maxsize=CACHED_LANGUAGES)
def cached_call_regex(name: str, parameters: str | None, where: str) -> str:
    """`call_regex`, for `parameters` as JSON text (clients send the same tools again and again)."""
    return call_regex(name, None if parameters is None else json.loads(parameters), where)


def _fsm(regex: str) -> FSM:
    return interegular.parse_pattern(regex).to_fsm()
