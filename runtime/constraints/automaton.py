"""A regular language as a character automaton, written out as a grammar from any of its states.

The gateway constrains an answer by a regular language (a JSON schema, a regex, a choice: `languages.py`). The
student and the teacher both get the language as an EBNF grammar (xgrammar's dialect, which vLLM and the local
engine compile), written from the automaton's start. When the teacher takes over an answer mid-way, the automaton
reads the text already sent and the teacher gets the grammar written from the state it reached: exactly the
continuations that complete a valid document. vLLM starts a grammar afresh after `continue_final_message`, so the
remainder has to be a grammar of its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import interegular
from interegular.fsm import FSM, anything_else


class NotInLanguage(ValueError):
    """The text is not the start of any document of the language."""


@dataclass(frozen=True)
class Automaton:
    fsm: FSM

    @classmethod
    def from_regex(cls, regex: str) -> Automaton:
        return cls(interegular.parse_pattern(regex).to_fsm())

    def walk(self, text: str, state: int | None = None) -> int:
        """The state after reading `text` from `state` (the start by default)."""
        state = self.fsm.initial if state is None else state
        for position, char in enumerate(text):
            step = self.fsm.map.get(state, {}).get(self.fsm.alphabet[char])
            if step is None or step not in self._live:
                raise NotInLanguage(f"no document of the language goes on with {text[position:position + 20]!r} "
                                    f"after {text[:position][-40:]!r}")
            state = step
        return state

    def allows(self, state: int, text: str) -> bool:
        """Whether a document of the language goes on with `text` from `state`: whether a grammar mask lets a token
        spelling `text` through there. A token with no text can only end the answer (the end-of-sequence token, as
        backends decode it), so it is allowed where a whole document has been read."""
        if not text:
            return state in self.fsm.finals
        try:
            self.walk(text, state)
        except NotInLanguage:
            return False
        return True

    def accepts(self, text: str) -> bool:
        try:
            return self.walk(text) in self.fsm.finals
        except NotInLanguage:
            return False

    def grammar(self, state: int | None = None) -> str:
        """The language's continuations from `state` (the start by default), as an EBNF grammar."""
        start = self.fsm.initial if state is None else state
        rules, todo, seen = [f"root ::= s{start}"], [start], {start}
        while todo:
            state = todo.pop()
            branches = [] if state not in self.fsm.finals else ['""']
            for target, chars in self._moves(state):
                branches.append(f"{chars} s{target}")
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
            rules.append(f"s{state} ::= " + " | ".join(branches))
        return "\n".join(rules) + "\n"

    def _moves(self, state: int) -> list[tuple[int, str]]:
        """(target, character class) for each live state `state` moves to."""
        by_target: dict[int, list] = defaultdict(list)
        for transition, target in self.fsm.map.get(state, {}).items():
            if target in self._live:
                by_target[target].append(transition)
        return [(target, self._char_class(transitions)) for target, transitions in sorted(by_target.items())]

    def _char_class(self, transitions: list) -> str:
        symbols = [symbol for transition in transitions for symbol in self.fsm.alphabet.by_transition[transition]]
        if anything_else in symbols:  # every character but the alphabet's others
            named = {symbol for symbol in self.fsm.alphabet if symbol is not anything_else}
            return _char_class(sorted(ord(char) for char in named - set(symbols)), negated=True)
        return _char_class(sorted(ord(char) for char in symbols))

    @cached_property
    def _live(self) -> frozenset[int]:
        """States from which a final state can be reached (the others are dead ends)."""
        live, grew = set(self.fsm.finals), True
        while grew:
            grew = False
            for state, moves in self.fsm.map.items():
                if state not in live and any(target in live for target in moves.values()):
                    live.add(state)
                    grew = True
        return frozenset(live)


def _char_class(codes: list[int], negated: bool = False) -> str:
    if not negated and len(codes) == 1:
        return '"' + _escaped(codes[0], quote='"') + '"'
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    body = "".join(_escaped(low, "]") if low == high else f"{_escaped(low, ']')}-{_escaped(high, ']')}"
                   for low, high in ranges)
    return f"[{'^' if negated else ''}{body}]"


def _escaped(code: int, quote: str) -> str:
    char = chr(code)
    if char in (quote, "\\", "-", "^", "[", "]") and not (quote == '"' and char in "-^[]"):
        return "\\" + char
    if 0x20 <= code < 0x7F:
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
