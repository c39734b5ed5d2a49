"""SSE frames of one streamed chat completion.

A plain content chunk (text, no logprobs, no extension fields) is nearly every chunk of a stream, and building a
pydantic model per token costs more than all the rest of the gateway's per-token work. So `content()` splices the
JSON-escaped text into the model's own serialisation of such a chunk, made once per stream; every other chunk goes
through the model. A property test checks that the two give the same bytes.
"""

from __future__ import annotations

import json

from gateway.chat import protocol

_MARK = "kdgate-content-mark"


class ChunkFrames:
    def __init__(self, chunk_id: str, created: int, model: str):
        self._common = {"id": chunk_id, "created": created, "model": model}
        template = self._chunk([protocol.ChatCompletionChunkChoice(delta=protocol.DeltaMessage(content=_MARK))])
        self._before, self._after = template.rsplit(json.dumps(_MARK), 1)  # content comes after id and model

    def frame(self, choices: list[protocol.ChatCompletionChunkChoice], **extra) -> str:
        """Any chunk, through the wire model."""
        return f"data: {self._chunk(choices, **extra)}\n\n"

    def content(self, text: str) -> str:
        """`frame([ChatCompletionChunkChoice(delta=DeltaMessage(content=text))])`, without the models."""
        return f"data: {self._before}{json.dumps(text, ensure_ascii=False)}{self._after}\n\n"

    def _chunk(self, choices, **extra) -> str:
        return protocol.ChatCompletionChunk(**self._common, choices=choices, **extra).model_dump_json()
