"""Routing records from the demo task: each held-out ticket answered by the student (with top-k logprobs) and by the
teacher, through the backends the gateway itself uses, both labelled against the ticket's exact answer."""

from __future__ import annotations

import asyncio

from tqdm import tqdm

from distill.demo import task
from distill.demo.scoring import parse_answer
from gateway.backends.base import Backend, Delta, GenerationRequest, SamplingParams
from router.records import RouteRecord, floor

MAX_TOKENS = 96  # the longest demo answer is well under this


async def answer(backend: Backend, request_id: str, messages: list[dict], top_logprobs: int | None
                 ) -> tuple[str, list[list[float]], list[float]]:
    """Greedy answer text, and per token the k alternatives' and the sampled token's logprobs."""
    request = GenerationRequest(request_id, tuple(messages),
                                SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, top_logprobs=top_logprobs))
    text, top, sampled = [], [], []
    async for event in backend.generate(request):
        if isinstance(event, Delta):
            text.append(event.text)
            for entry in event.logprobs:
                top.append([floor(alternative.logprob) for alternative in entry.top_logprobs])
                sampled.append(floor(entry.logprob))
    return "".join(text), top, sampled


def is_right(text: str, ticket: task.Ticket) -> bool:
    return parse_answer(text) == ticket.answer


async def collect_demo(student: Backend, teacher: Backend, split: str, examples: int, seed: int = 0,
                       top_logprobs: int = 5, concurrency: int = 32) -> list[RouteRecord]:
    tickets = task.take(split, examples, seed=seed)
    gate = asyncio.Semaphore(concurrency)  # enough in flight for the engines to batch
    progress = tqdm(total=len(tickets), desc=f"records ({split})", unit="ticket")

    async def one(index: int, ticket: task.Ticket) -> RouteRecord:
        async with gate:
            messages = ticket.messages()
            (student_text, top, sampled), (teacher_text, _, _) = await asyncio.gather(
                answer(student, f"{split}-{index}-s", messages, top_logprobs),
                answer(teacher, f"{split}-{index}-t", messages, None))
        progress.update()
        return RouteRecord(id=f"{split}-{seed}-{index}", group=ticket.factors.get("shape"),
                           student_text=student_text, student_top=top, student_sampled=sampled,
                           student_correct=is_right(student_text, ticket), teacher_text=teacher_text,
                           teacher_correct=is_right(teacher_text, ticket))

    try:
        return list(await asyncio.gather(*(one(index, ticket) for index, ticket in enumerate(tickets))))
    finally:
        progress.close()


async def collect_from_settings(config, split: str, examples: int, seed: int, top_logprobs: int) -> list[RouteRecord]:
    """`collect_demo` with the backends the gateway's settings describe (the embedded demo by default)."""
    from gateway.app import open_backends
    from gateway.settings import load_settings

    settings = load_settings(config)
    if settings.teacher is None:
        raise ValueError("routing records need a teacher backend; set `teacher` in the settings")
    async with open_backends(settings) as backends:
        return await collect_demo(backends["student"], backends["teacher"], split, examples, seed, top_logprobs)
