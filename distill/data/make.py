"""One teacher cache from start to finish: pick the backend, assemble the filters, write the manifest, generate.

`kdgate distill generate` and `kdgate demo build` both come through here, so the demo student the build trains
sees exactly the cache the README's `kdgate distill generate --demo N` command writes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from distill.data.cache import Manifest, tokenizer_hash
from distill.data.filters import Dedup, JsonFields, MatchesReference, MaxEntropy, SampleAgreement, Truncated
from distill.data.generate import GenerateSettings, Prompt, generate

DEMO_FIELDS = ("queue", "priority", "reply")


@dataclass(frozen=True)
class Teacher:
    """A local model folder, or an OpenAI-compatible server (vLLM) serving `model` at `base_url`."""

    model_dir: Path
    base_url: str | None = None
    model: str | None = None
    tokenizer: Path | None = None  # whose hash the cache records (default: `model_dir`)
    threads: int | None = None  # torch CPU threads of a local teacher

    def __post_init__(self) -> None:
        if self.base_url and not self.model:
            raise ValueError("a teacher server (--base-url) needs --model, the served model id")

    @property
    def name(self) -> str:
        return self.model if self.base_url else str(Path(self.model_dir).resolve())


@dataclass(frozen=True)
class Filters:
    json_fields: tuple[str, ...] = ()  # answers must be JSON objects with these fields
    check_reference: bool = True  # drop answers that disagree with a prompt's reference
    max_entropy: float | None = None
    min_agreement: float = 0.5  # with several samples per prompt: the majority share needed


def demo_prompts(count: int, seed: int) -> tuple[str, list[Prompt]]:
    """The first `count` demo training tickets for `seed`, with their ground truth as the reference."""
    from distill.demo import task

    prompts = [Prompt(f"demo-{index}", ticket.messages(), ticket.answer_json())
               for index, ticket in enumerate(task.take("train", count, seed=seed))]
    return f"demo:train:{count}:seed{seed}", prompts


def make_cache(out: Path, prompts: list[Prompt], source: str, teacher: Teacher, settings: GenerateSettings,
               filters: Filters) -> Manifest:
    """Generate (or resume) the cache in `out`; a cache there made with other settings is refused (ValueError)."""
    per_answer = [Truncated()]
    if filters.json_fields:
        per_answer.append(JsonFields(filters.json_fields))
    if filters.check_reference:
        per_answer.append(MatchesReference())
    if filters.max_entropy is not None:
        per_answer.append(MaxEntropy(filters.max_entropy))
    manifest = Manifest(teacher=teacher.name, tokenizer_hash=tokenizer_hash(teacher.tokenizer or teacher.model_dir),
                        top_k=settings.top_k, temperature=settings.temperature,
                        samples_per_prompt=settings.samples, seed=settings.seed, prompts=source)

    async def run():
        backend = _backend(teacher)
        try:
            return await generate(backend, prompts, out, settings, manifest, per_answer,
                                  [SampleAgreement(filters.min_agreement), Dedup()])
        finally:
            await backend.aclose()

    return asyncio.run(run())


def _backend(teacher: Teacher):
    if teacher.base_url:
        import httpx

        from gateway.backends.base import BackendInfo
        from gateway.backends.http import HttpBackend

        class Owned(HttpBackend):  # the cache run owns its client: close it with the backend
            async def aclose(self) -> None:
                await self._client.aclose()

        client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
        return Owned(BackendInfo("teacher", teacher.model, "http"), teacher.base_url, client)
    from gateway.backends.local import LocalBackend
    from gateway.settings import BackendSettings

    return LocalBackend("teacher", BackendSettings(model_dir=teacher.model_dir,
                                                   threads=teacher.threads).engine_settings())
