"""A structured-output request (vLLM's `structured_outputs`, which `response_format` maps to) as a regular language.

The language comes from well-kept libraries: outlines-core writes a JSON schema as a regex (the compiler vLLM's
`outlines` backend used), interegular turns a regex into an automaton. A JSON schema keyword that the regex would not
enforce (numeric bounds, `uniqueItems`, `oneOf`'s exclusivity, ...) is refused by name rather than dropped: every
answer must validate against the schema the client sent. A `grammar` is passed on as it is: it constrains the answer
on both backends, but no remainder can be derived from it, so a constrained-by-grammar answer is never handed over
mid-stream (the router decides before the first token is sent, or serves it whole).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from outlines_core.json_schema import build_regex_from_schema

from runtime.constraints.automaton import Automaton, NotInLanguage
from runtime.constraints.schema_check import check_schema
from runtime.errors import InvalidRequest

KINDS = ("json", "json_object", "regex", "choice", "grammar")
OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
ANY_OBJECT = {"type": "object"}  # `json_object`: outlines-core's regex for any object (nesting bounded)
CACHED_LANGUAGES = 256
MAX_REPETITIONS = 512  # the counts of `{m,n}` in a language's regex, summed: at most about 3,000 states, 2-3 s
QUANTIFIER = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")  # an unescaped {m}, {m,} or {m,n}


@dataclass(frozen=True)
class Constraint:
    """One request's constraint: what the client asked (`spec`, vLLM's shape) and, when it is regular, the
    automaton that lets a handoff derive the grammar of the rest of the answer."""

    spec: dict
    automaton: Automaton | None

    @property
    def kind(self) -> str:
        """The client's kind of constraint, or `tools`: the language of an answer that may call tools, whose spec
        holds the tools and the choice (gateway/tools/grammar.py)."""
        return next((key for key in KINDS if key in self.spec), "tools")

    @property
    def tools(self) -> tuple[dict, ...] | None:
        """The tools the template renders for an answer under this constraint."""
        return tuple(self.spec["tools"]) if self.kind == "tools" else None

    @property
    def derivable(self) -> bool:
        return self.automaton is not None

    @cached_property
    def structured_outputs(self) -> dict:
        """What a backend is sent: the language as a grammar, so both backends and every continuation read the
        same one; a client's own grammar as it came."""
        if self.automaton is not None:
            return {"grammar": self.automaton.grammar()}
        return None if self.kind == "tools" else dict(self.spec)

    def after(self, text: str) -> dict:
        """The backend's `structured_outputs` for the rest of an answer that starts with `text` (raises
        `NotInLanguage` when no document of the language does)."""
        if self.automaton is None:
            raise NotInLanguage(f"a `{self.kind}` constraint has no remainder grammar")
        return {"grammar": self.automaton.grammar(self.automaton.walk(text))}

    def accepts(self, text: str) -> bool | None:
        """Whether `text` is a whole document of the language; None for a grammar (not checked here)."""
        return None if self.automaton is None else self.automaton.accepts(text)


def constraint(spec: dict) -> Constraint:
    """The constraint of a `structured_outputs` object (cached by its content: compiling a big schema takes a
    while, and clients send the same schema again and again). Blocking: call it off the event loop. The key keeps
    the order of keys: a schema's `properties` order is its documents' order."""
    return _compiled(json.dumps(spec))


@lru_cache(maxsize=CACHED_LANGUAGES)
def _compiled(canonical: str) -> Constraint:
    spec = json.loads(canonical)
    kinds = [key for key in KINDS if spec.get(key) not in (None, False)]
    unknown = sorted(set(spec) - set(KINDS) - set(OPTIONS))
    if unknown:
        raise InvalidRequest(f"`structured_outputs.{unknown[0]}` is not supported; use one of "
                             f"{', '.join(f'`{kind}`' for kind in KINDS)}", parameter=f"structured_outputs.{unknown[0]}")
    if len(kinds) != 1:
        raise InvalidRequest("`structured_outputs` must have exactly one of " + ", ".join(f"`{kind}`" for kind in KINDS)
                             + f"; got {', '.join(kinds) or 'none'}", parameter="structured_outputs")
    kind = kinds[0]
    if kind == "grammar":
        if not isinstance(spec["grammar"], str) or not spec["grammar"].strip():
            raise InvalidRequest("`structured_outputs.grammar` must be an EBNF grammar (text)",
                                 parameter="structured_outputs.grammar")
        return Constraint({"grammar": spec["grammar"]}, None)
    regex = _regex(kind, spec)
    parameter = "schema" if kind == "json" else f"structured_outputs.{kind}"
    check_size(regex, parameter)
    automaton = _automaton(kind, regex, parameter)
    if kind == "json" and (automaton.accepts("") or not automaton.grammar().count("::=") > 2):
        raise InvalidRequest("the JSON schema admits no document (an empty `enum` or `anyOf`?); give one that "
                             "some JSON value satisfies", parameter=parameter)
    return Constraint(spec, automaton)


def _regex(kind: str, spec: dict) -> str:
    if kind == "regex":
        if not isinstance(spec["regex"], str) or not spec["regex"]:
            raise InvalidRequest("`structured_outputs.regex` must be a non-empty regular expression",
                                 parameter="structured_outputs.regex")
        return _unanchored(spec["regex"])
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise InvalidRequest("`structured_outputs.choice` must be a non-empty list of non-empty strings",
                                 parameter="structured_outputs.choice")
        return "|".join(_literal(choice) for choice in choices)
    schema = ANY_OBJECT if kind == "json_object" else spec["json"]
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as error:
            raise InvalidRequest(f"`structured_outputs.json` is not valid JSON ({error})",
                                 parameter="structured_outputs.json") from None
    check_schema(schema)
    try:
        return build_regex_from_schema(json.dumps(schema), _whitespace(spec))
    except (ValueError, TypeError) as error:
        raise InvalidRequest(f"the JSON schema cannot be turned into a grammar: {str(error).splitlines()[0]}",
                             parameter="schema") from None


def check_size(regex: str, parameter: str) -> None:
    """A counted repetition becomes that many automaton states, and building the automaton grows faster than
    that (a string of `maxLength` 3000 took 20 s, blocking a worker thread): the counts are bounded up front."""
    counts = [int(number) for low, high in QUANTIFIER.findall(regex) for number in (low, high) if number]
    if sum(counts) > MAX_REPETITIONS:
        raise InvalidRequest(f"the constraint's counted repetitions (`maxLength`, `maxItems`, `{{m,n}}`, ...) add "
                             f"up to {sum(counts)}, above kdgate's limit of {MAX_REPETITIONS}; lower them or drop "
                             "them and check the lengths after parsing", parameter=parameter)


def _whitespace(spec: dict) -> str | None:
    """Between JSON tokens: the client's pattern; none at all with `disable_any_whitespace`; else outlines-core's
    default, at most one space (a model cannot pad a document with endless whitespace)."""
    if spec.get("whitespace_pattern") is not None:
        return spec["whitespace_pattern"]
    return "" if spec.get("disable_any_whitespace") else None


def _automaton(kind: str, regex: str, parameter: str) -> Automaton:
    try:
        return Automaton.from_regex(regex)
    except Exception as error:  # interegular's parse errors have no common base class
        what = {"regex": "the regular expression", "json": "a `pattern` of the JSON schema"}.get(kind, kind)
        raise InvalidRequest(f"{what} cannot be compiled ({type(error).__name__}: {error}); kdgate takes regexes "
                             "without lookaround or backreferences", parameter=parameter) from None


def _unanchored(regex: str) -> str:
    """The answer is matched whole (as vLLM matches it): `^` at the start and `$` at the end say nothing more."""
    if regex.startswith("^"):
        regex = regex[1:]
    if regex.endswith("$") and (len(regex) - len(regex.rstrip("\\$")) + 1) % 2 == 0:
        regex = regex[:-1]
    return regex


def _literal(text: str) -> str:
    return re.sub(r"([\\.^$*+?{}\[\]|()/-])", r"\\\1", text)
