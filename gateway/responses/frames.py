"""Server-sent events of one streamed response, as OpenAI sends them: `event: <type>` and `data: <json>` lines,
each event numbered by `sequence_number` from 0.

A text delta is nearly every event of a stream, so `text_delta()` splices the JSON-escaped text into one event
serialised once per stream (as chat's frames do); every other event is serialised whole.
"""

from __future__ import annotations

import json

_MARK = "kdgate-delta-mark"
_NUMBER = 987654321  # a sequence number no stream reaches, replaced in the template


class EventFrames:
    def __init__(self, item_id: str):
        self.sequence_number = 0
        template = self._data({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                               "content_index": 0, "delta": _MARK, "logprobs": [], "sequence_number": _NUMBER})
        self._before, after = template.split(json.dumps(_MARK))  # the delta, then the number (the last field)
        self._middle, self._after = after.split(str(_NUMBER))

    def event(self, kind: str, **fields) -> str:
        """Any event: its type, then its fields, with the next sequence number."""
        data = {"type": kind, **fields, "sequence_number": self._next()}
        return f"event: {kind}\ndata: {self._data(data)}\n\n"

    def text_delta(self, text: str) -> str:
        """`event("response.output_text.delta", ...)` of plain text, without building the dict."""
        data = f"{self._before}{json.dumps(text, ensure_ascii=False)}{self._middle}{self._next()}{self._after}"
        return f"event: response.output_text.delta\ndata: {data}\n\n"

    def _next(self) -> int:
        number, self.sequence_number = self.sequence_number, self.sequence_number + 1
        return number

    @staticmethod
    def _data(data: dict) -> str:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
