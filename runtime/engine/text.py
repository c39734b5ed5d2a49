"""Generated ids to streamed text: incremental detokenization and stop strings with a hold-back buffer.

Text is released token by token, except that a tail that could still grow into a stop string is held back until
it either completes one (the stop string and everything after it is dropped, as vLLM does by default) or cannot.
Each released token travels with its logprob entry, so text and logprobs stay aligned in every chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.contract import TokenLogprob


class IncrementalDetokenizer:
    """Decode one id at a time without splitting multi-byte characters (the prefix/read-offset method)."""

    def __init__(self, tokenizer, prompt_tail: Sequence[int] = ()):
        self._tokenizer = tokenizer
        # A few prompt ids give the decoder context, so a leading space of the first new token is not stripped.
        self._ids: list[int] = list(prompt_tail)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        after = decode(self._ids[self._prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return after[len(before):]
        return ""


@dataclass
class Released:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    stop: str | None = None  # the stop string that ended the output, if any


class StopStringBuffer:
    """Holds back text that may be the start of a stop string; finds the first complete one."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(stops)
        self._pending: list[tuple[str, TokenLogprob | None]] = []

    def push(self, text: str, logprob: TokenLogprob | None) -> Released:
        self._pending.append((text, logprob))
        held = "".join(piece for piece, _ in self._pending)
        matches = sorted((held.find(stop), stop) for stop in self._stops if stop in held)
        if matches:
            return self._release_before(*matches[0])
        keep = self._longest_stop_prefix_suffix(held)
        return self._release_tokens_while(len(held) - keep)

    def flush(self) -> Released:
        """Everything still held, at the end of the output."""
        return self._release_tokens_while(sum(len(piece) for piece, _ in self._pending))

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def _release_tokens_while(self, budget: int) -> Released:
        released = Released()
        while self._pending and len(self._pending[0][0]) <= budget - len(released.text):
            piece, logprob = self._pending.pop(0)
            released.text += piece
            if logprob is not None:
                released.logprobs.append(logprob)
        return released

    def _release_before(self, cut: int, stop: str) -> Released:
        """The text before the stop string, and the logprobs of every token held, the stop string's own included:
        vLLM cuts the text but reports every token it generated (and counts them in `completion_tokens`)."""
        released = Released(stop=stop)
        for piece, logprob in self._pending:
            if len(released.text) < cut:
                released.text += piece[: cut - len(released.text)]
            if logprob is not None:
                released.logprobs.append(logprob)
        self._pending.clear()
        return released
