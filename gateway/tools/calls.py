"""Tool calls out of a model's text, in the hermes format the chat templates write them in (and vLLM's `hermes`
tool parser reads): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call.

Backends only generate text (`GenerationRequest.tools`): the gateway parses it, so that a handoff can give the
teacher a call's unfinished arguments. The parsing follows vLLM's `Hermes2ProToolParser`: content is the text before
the first `<tool_call>`; a whole answer whose calls do not parse is content, as vLLM returns it; a stream sends each
call's name once it is complete, then its arguments' raw text as it grows, holding back what may still turn out to be
a tag.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

START, END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')
_ARGUMENTS = re.compile(r'"arguments"\s*:\s*')


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse(text: str) -> tuple[str | None, list[ParsedCall]]:
    """A whole answer's content and calls; no calls when there is no `<tool_call>` or a call does not parse."""
    if START not in text:
        return text, []
    try:
        calls = []
        for whole, unfinished in _BLOCK.findall(text):
            call = json.loads(whole or unfinished)
            calls.append(ParsedCall(call_id(), call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
    except (ValueError, KeyError, TypeError):
        return text, []
    return text[:text.index(START)] or None, calls


@dataclass(frozen=True)
class ContentPiece:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    index: int
    text: str


Piece = ContentPiece | CallStart | ArgumentsPiece


@dataclass
class CallStream:
    """The pieces of a streamed answer, fed its text as it comes."""

    text: str = ""
    content_sent: int = 0
    names_sent: list[str] = field(default_factory=list)
    arguments_sent: list[str] = field(default_factory=list)

    @property
    def called(self) -> bool:
        return bool(self.names_sent)

    def feed(self, delta: str) -> list[Piece]:
        self.text += delta
        return self._pieces(final=False)

    def close(self) -> list[Piece]:
        """What was held back, once the answer is whole (a tag that never came is content after all)."""
        return self._pieces(final=True)

    def _pieces(self, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        start = self.text.find(START)
        sendable = start if start != -1 else len(self.text) - (0 if final else _overlap(self.text, START))
        if sendable > self.content_sent:
            pieces.append(ContentPiece(self.text[self.content_sent:sendable]))
            self.content_sent = sendable
        if start == -1:
            return pieces
        for index, (body, whole) in enumerate(_bodies(self.text[start:], final)):
            if index == len(self.names_sent):
                name = _NAME.search(body)
                if name is None:
                    break
                self.names_sent.append(name.group(1))
                self.arguments_sent.append("")
                pieces.append(CallStart(index, call_id(), name.group(1)))
            arguments = _arguments(body, whole)
            if arguments is not None and len(arguments) > len(self.arguments_sent[index]) \
                    and arguments.startswith(self.arguments_sent[index]):
                pieces.append(ArgumentsPiece(index, arguments[len(self.arguments_sent[index]):]))
                self.arguments_sent[index] = arguments
        return pieces


def _bodies(text: str, final: bool) -> list[tuple[str, bool]]:
    """Each call's JSON text so far, and whether it is whole."""
    bodies, position = [], 0
    while (start := text.find(START, position)) != -1:
        begin = start + len(START)
        end = text.find(END, begin)
        if end != -1:
            bodies.append((text[begin:end].strip(), True))
            position = end + len(END)
            continue
        raw = text[begin:]
        if not final and (overlap := _overlap(raw, END)):
            raw = raw[:-overlap]
        body = raw.strip()
        bodies.append((body, final or _is_whole(body)))
        break
    return bodies


def _arguments(body: str, whole: bool) -> str | None:
    """The text of the call's arguments: after `"arguments": `, less the outer object's `}` once the call is
    whole."""
    match = _ARGUMENTS.search(body)
    if match is None:
        return None
    raw = body[match.end():]
    if whole:
        raw = raw.rstrip()
        raw = raw[:-1].rstrip() if raw.endswith("}") else raw
    return raw


def _is_whole(body: str) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _overlap(text: str, tag: str) -> int:
    """How many of `text`'s last characters could start `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
