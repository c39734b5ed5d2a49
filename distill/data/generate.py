"""`kdgate distill generate`: prompts → the teacher's answers with top-k logprobs, filtered, in a resumable cache.

Any backend works (the local engine, or an HTTP vLLM server started with `--max-logprobs K` for K > 20): the
request asks for `top_logprobs=k` and exact token ids (vLLM's `return_tokens_as_token_ids`). Prompts run
concurrently so the engine batches them; finished prompts are written in shards of whole prompts, so a rerun with
the same settings resumes where the last complete shard ended.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill.data.cache import CachedAnswer, Manifest, done_keys, read_answers, shards, write_shard
from distill.data.filters import apply_filters
from runtime.contract import Backend, GenerationRequest, SamplingParams, collect

FILL_ID, FILL_LOGPROB = -1, -9999.0


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict]
    reference: str | None = None  # a known right answer (the demo's ground truth), for the reference filter
    tools: list[dict] | None = None  # OpenAI's `tools` the prompt offers; the chat template renders them


@dataclass(frozen=True)
class GenerateSettings:
    top_k: int = 20
    samples: int = 1
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 256
    concurrency: int = 32
    shard_size: int = 512  # prompts per shard: at most this many are redone after a crash

    def __post_init__(self) -> None:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("several samples per prompt need `temperature` > 0 (greedy samples are identical)")
        if not 1 <= self.top_k <= 100:
            raise ValueError(f"`top_k` must be between 1 and 100, got {self.top_k}")


def load_prompts(path: Path) -> list[Prompt]:
    """JSON lines with `messages` (or a `prompt` string), optional `id`, `reference` and `tools`."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            messages = raw.get("messages") or [{"role": "user", "content": raw["prompt"]}]
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ValueError(f"{path}:{number}: a prompt line needs `messages` or `prompt` ({error!r})") from None
        prompts.append(Prompt(str(raw.get("id", number)), messages, raw.get("reference"), raw.get("tools") or None))
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    if len({prompt.id for prompt in prompts}) != len(prompts):
        raise ValueError(f"{path}: prompt ids must be unique")
    return prompts


async def teacher_answer(backend: Backend, prompt: Prompt, sample: int, settings: GenerateSettings,
                         seed: int) -> CachedAnswer:
    request = GenerationRequest(
        f"distill-{prompt.id}-{sample}", tuple(prompt.messages),
        SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature, seed=seed,
                       top_logprobs=settings.top_k), token_ids=True,
        tools=tuple(prompt.tools) if prompt.tools else None)
    answer = await collect(backend.generate(request))
    ids, top_ids, top_logprobs = [], [], []
    for entry in answer.logprobs:
        if entry.token_id is None:
            raise ValueError(f"backend `{backend.info.name}` returned logprobs without token ids; a vLLM "
                             "server must support `return_tokens_as_token_ids`")
        ids.append(entry.token_id)
        row = [(top.token_id, top.logprob) for top in entry.top_logprobs[:settings.top_k]]
        row += [(FILL_ID, FILL_LOGPROB)] * (settings.top_k - len(row))
        top_ids.append([token_id for token_id, _ in row])
        top_logprobs.append([max(value, FILL_LOGPROB) for _, value in row])
    shape = (len(ids), settings.top_k)
    finish_reason = answer.finish.finish_reason if answer.finish else "abort"
    return CachedAnswer(prompt.id, sample, prompt.messages, answer.text, finish_reason,
                        np.asarray(ids, dtype=np.int32),
                        np.asarray(top_ids, dtype=np.int32).reshape(shape),
                        np.asarray(top_logprobs, dtype=np.float16).reshape(shape), reference=prompt.reference,
                        tools=prompt.tools)


async def generate(backend: Backend, prompts: Sequence[Prompt], out: Path, settings: GenerateSettings,
                   manifest: Manifest, per_answer: Sequence = (), per_prompt: Sequence = ()) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, manifest)
    manifest.save(out)
    done = {prompt_id for prompt_id, _ in done_keys(out)}
    todo = [(index, prompt) for index, prompt in enumerate(prompts) if prompt.id not in done]
    gate = asyncio.Semaphore(settings.concurrency)
    progress = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="teacher answers", unit="prompt")

    async def one(index: int, prompt: Prompt) -> list[CachedAnswer]:
        async with gate:
            answers = list(await asyncio.gather(*(
                teacher_answer(backend, prompt, sample, settings,
                               seed=(settings.seed * 1_000_003 + index * 101 + sample) % 2**31)
                for sample in range(settings.samples))))
        progress.update()
        return apply_filters(answers, per_answer, per_prompt)

    shard_index = len(shards(out))
    try:
        for start in range(0, len(todo), settings.shard_size):
            batch = todo[start:start + settings.shard_size]
            results = await asyncio.gather(*(one(index, prompt) for index, prompt in batch))
            write_shard(out, shard_index, [answer for answers in results for answer in answers])
            shard_index += 1
    finally:
        progress.close()
    return _count(out, manifest)


def _check_resumable(out: Path, manifest: Manifest) -> None:
    if not (out / "manifest.json").is_file():
        return
    existing = Manifest.load(out)
    fields = ("teacher", "tokenizer_hash", "top_k", "temperature", "samples_per_prompt", "seed")
    different = [name for name in fields if getattr(existing, name) != getattr(manifest, name)]
    if different:
        raise ValueError(f"{out} already holds a teacher cache made with other settings ({', '.join(different)}); "
                         "resume with the same settings, or choose another --out")


def _count(out: Path, manifest: Manifest) -> Manifest:
    reasons: Counter[str] = Counter()
    rows = kept = 0
    for answer in read_answers(out, manifest.top_k, kept_only=False):
        rows += 1
        kept += answer.kept
        if not answer.kept:
            reasons[answer.drop_reason or "unknown"] += 1
    manifest.rows, manifest.kept, manifest.dropped = rows, kept, dict(reasons)
    manifest.save(out)
    return manifest
