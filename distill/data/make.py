"""One teacher cache from start to finish: pick the backend, assemble the filters, write the manifest, generate.

`kdgate distill generate` and `kdgate demo build` both come through here, so the demo student the build trains
sees exactly the cache the README's `kdgate distill generate --demo N` command writes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from distill.data.cache import Manifest
from distill.data.filters import Dedup, JsonFields, MatchesReference, MaxEntropy, SampleAgreement, Truncated
from distill.data.generate import GenerateSettings, Prompt, generate
from runtime.backends.factory import open_backends
from runtime.settings import BackendSettings, HttpClientSettings
from runtime.tokenizer_hash import tokenizer_hash


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
        async with open_backends({"teacher": _backend_settings(teacher)}, HttpClientSettings(read_timeout_s=300.0,
                                                                                          connect_timeout_s=10.0)
                                 ) as backends:
            return await generate(backends["teacher"], prompts, out, settings, manifest, per_answer,
                                  [SampleAgreement(filters.min_agreement), Dedup()])

    return asyncio.run(run())


def _backend_settings(teacher: Teacher) -> BackendSettings:
    if teacher.base_url:
        return BackendSettings(kind="http", base_url=teacher.base_url, model=teacher.model)
    return BackendSettings(model_dir=teacher.model_dir, threads=teacher.threads)
