"""SSE frames of one streamed completion, with chat's template trick (gateway.chat.frames): a plain text chunk (no
logprobs, no extension fields) is spliced into the wire model's own serialisation of one, made once per stream."""

from __future__ import annotations

import json

from gateway.completions import protocol

_MARK = "kdgate-text-mark"


class TextFrames:
    def __init__(self, chunk_id: str, created: int, model: str):
        self._common = {"id": chunk_id, "created": created, "model": model}
        template = self._chunk([protocol.CompletionChoice(text=_MARK)])
        self._before, self._after = template.rsplit(json.dumps(_MARK), 1)  # text comes after id and model

    def frame(self, choices: list[protocol.CompletionChoice], **extra) -> str:
        """Any chunk, through the wire model."""
        return f"data: {self._chunk(choices, **extra)}\n\n"

    def text(self, text: str) -> str:
        """`frame([CompletionChoice(text=text)])`, without the models."""
        return f"data: {self._before}{json.dumps(text, ensure_ascii=False)}{self._after}\n\n"

    def _chunk(self, choices, **extra) -> str:
        return protocol.CompletionChunk(**self._common, choices=choices, **extra).model_dump_json()
