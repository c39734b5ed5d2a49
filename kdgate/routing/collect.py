"""Routing records from the demo task: each held-out ticket answered by the student (with top-k logprobs) and by the
teacher, through the backends the gateway itself uses, both labelled against the ticket's exact answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tqdm import tqdm

from distill.demo import task
from distill.demo.scoring import parse_answer
from router.records import RouteRecord, floor
from runtime.constraints.languages import constraint
from runtime.contract import Backend, GenerationRequest, SamplingParams, collect

MAX_TOKENS = 96  # the longest demo answer is well under this


@dataclass
class Answer:
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    top: list[list[float]] = field(default_factory=list)  # per token, the k alternatives' logprobs
    sampled: list[float] = field(default_factory=list)  # per token, the sampled token's logprob
    completion_tokens: int = 0


async def answer(backend: Backend, request: GenerationRequest) -> Answer:
    """The whole answer to `request`, with its tokens and their logprobs when the request asks for them."""
    collected = await collect(backend.generate(request))
    return Answer(text=collected.text, tokens=[entry.token for entry in collected.logprobs],
                  top=[[floor(alternative.logprob) for alternative in entry.top_logprobs]
                       for entry in collected.logprobs],
                  sampled=[floor(entry.logprob) for entry in collected.logprobs],
                  completion_tokens=collected.finish.completion_tokens if collected.finish else 0)


def greedy(request_id: str, messages: list[dict], top_logprobs: int | None, structured: dict | None = None
           ) -> GenerationRequest:
    """The request the gateway would send; `structured`: the client's constraint, compiled as the gateway compiles
    it (both backends get its grammar, a handoff's continuation the grammar of the rest)."""
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, top_logprobs=top_logprobs)
    if structured is None:
        return GenerationRequest(request_id, tuple(messages), sampling)
    language = constraint(structured)
    return GenerationRequest(request_id, tuple(messages), sampling, structured_outputs=language.structured_outputs,
                             constraint=language)


def answer_schema() -> dict:
    """The demo answer's schema as a client would ask for it (`response_format: json_schema`)."""
    return {"json": task.ANSWER_SCHEMA}


def is_right(text: str, ticket: task.Ticket) -> bool:
    return parse_answer(text) == ticket.answer


async def collect_demo(student: Backend, teacher: Backend, split: str, examples: int, seed: int = 0,
                       top_logprobs: int = 5, concurrency: int = 32, structured: dict | None = None
                       ) -> list[RouteRecord]:
    tickets = task.take(split, examples, seed=seed)
    gate = asyncio.Semaphore(concurrency)  # enough in flight for the engines to batch
    progress = tqdm(total=len(tickets), desc=f"records ({split})", unit="ticket")

    async def one(index: int, ticket: task.Ticket) -> RouteRecord:
        async with gate:
            messages = ticket.messages()
            student_answer, teacher_answer = await asyncio.gather(
                answer(student, greedy(f"{split}-{index}-s", messages, top_logprobs, structured)),
                answer(teacher, greedy(f"{split}-{index}-t", messages, None, structured)))
        progress.update()
        return RouteRecord(id=f"{split}-{seed}-{index}", group=ticket.factors.get("shape"),
                           student_text=student_answer.text, student_top=student_answer.top,
                           student_sampled=student_answer.sampled, student_tokens=student_answer.tokens,
                           student_correct=is_right(student_answer.text, ticket), teacher_text=teacher_answer.text,
                           teacher_correct=is_right(teacher_answer.text, ticket),
                           teacher_completion_tokens=teacher_answer.completion_tokens, reference=ticket.answer_json(),
                           messages=messages, structured_outputs=structured)

    try:
        return list(await asyncio.gather(*(one(index, ticket) for index, ticket in enumerate(tickets))))
    finally:
        progress.close()


async def collect_from_settings(config, split: str, examples: int, seed: int, top_logprobs: int,
                                threads: int | None = None, structured: dict | None = None) -> list[RouteRecord]:
    """`collect_demo` with the backends the gateway's settings describe (the embedded demo by default); `threads`
    sets each local backend's torch threads."""
    from gateway.settings import load_settings
    from runtime.backends.factory import open_backends

    settings = load_settings(config)
    if settings.teacher is None:
        raise ValueError("routing records need a teacher backend; set `teacher` in the settings")
    backends = {role: backend.model_copy(update={"threads": threads}) if threads and backend.kind == "local"
                else backend for role, backend in settings.backends().items()}
    async with open_backends(backends, settings.http) as backends:
        return await collect_demo(backends["student"], backends["teacher"], split, examples, seed, top_logprobs,
                                  structured=structured)
