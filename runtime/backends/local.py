"""Local backend: the in-process engine behind the backend protocol. Imports torch, so it loads only when used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from runtime.backends.scoring import ScoredAnswer, score_answer
from runtime.contract import BackendInfo, Event, GenerationRequest
from runtime.errors import UpstreamUnavailable


class LocalBackend:
    def __init__(self, name: str, settings, model_name: str | None = None):
        from runtime.engine.engine import LocalEngine

        self.engine = LocalEngine(settings)
        self.info = BackendInfo(name=name, model=model_name or settings.model_dir.name, kind="local",
                                max_model_len=self.engine.max_model_len,
                                details={"device": str(self.engine.device), "dtype": str(self.engine.dtype)})

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        return self.engine.generate(request)

    async def score(self, messages: list[dict], answer: str, top_logprobs: int,
                    tools: tuple[dict, ...] | None = None) -> ScoredAnswer:
        return await score_answer(self, messages, answer, top_logprobs, tools)

    async def check_ready(self) -> None:
        if not self.engine.is_alive():
            raise UpstreamUnavailable(f"backend `{self.info.name}`: the local engine thread has stopped",
                                      backend=self.info.name)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.shutdown)
