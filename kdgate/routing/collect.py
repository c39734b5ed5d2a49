"""Routing records from the demo task: each held-out ticket answered by the student (with top-k logprobs) and by the
teacher, through the backends the gateway itself uses, both labelled against the ticket's exact answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tqdm import tqdm

from distill.demo import task, tools
from distill.demo.scoring import parse_answer
from distill.demo.tools import parse_tool_calls
from gateway.tools.grammar import tool_choice_of
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


def greedy(request_id: str, messages: list[dict], top_logprobs: int | None, structured: dict | None = None,
           tools: list[dict] | None = None) -> GenerationRequest:
    """The request the gateway would send; `structured`: the client's constraint, compiled as the gateway compiles
    it (both backends get its grammar, a handoff's continuation the grammar of the rest); `tools`: offered with
    `tool_choice: auto`, the answer held to the language of text or calls, as the gateway holds it."""
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, top_logprobs=top_logprobs)
    if structured is None and not tools:
        return GenerationRequest(request_id, tuple(messages), sampling)
    language = tool_choice_of(tools).constraint(structured) if tools else constraint(structured)
    return GenerationRequest(request_id, tuple(messages), sampling, structured_outputs=language.structured_outputs,
                             constraint=language, tools=tuple(tools) if tools else None)


def answer_schema() -> dict:
    """The demo answer's schema as a client would ask for it (`response_format: json_schema`)."""
    return {"json": task.ANSWER_SCHEMA}


def is_right(text: str, reference: str, tools: list[dict] | None = None) -> bool:
    """The answer matches the reference: the same answer object, or with tools the same calls (names and parsed
    arguments: tool-call exact match)."""
    if tools:
        return parse_tool_calls(text) is not None and parse_tool_calls(text) == parse_tool_calls(reference)
    return parse_answer(text) == parse_answer(reference)


def demo_prompts(split: str, examples: int, seed: int, with_tools: bool) -> list[tuple[task.Ticket, list, str]]:
    """(ticket, messages, reference): the plain task's answer, or with tools its call turn (`lookup_order` of the
    broken product's order)."""
    if with_tools:
        return [(conversation.ticket, *conversation.call_turn()) for conversation in tools.take(split, examples, seed)]
    return [(ticket, ticket.messages(), ticket.answer_json()) for ticket in task.take(split, examples, seed=seed)]


async def collect_demo(student: Backend, teacher: Backend, split: str, examples: int, seed: int = 0,
                       top_logprobs: int = 5, concurrency: int = 32, structured: dict | None = None,
                       with_tools: bool = False) -> list[RouteRecord]:
    prompts = demo_prompts(split, examples, seed, with_tools)
    offered = list(tools.TOOLS) if with_tools else None
    gate = asyncio.Semaphore(concurrency)  # enough in flight for the engines to batch
    progress = tqdm(total=len(prompts), desc=f"records ({split})", unit="ticket")

    async def one(index: int, ticket: task.Ticket, messages: list[dict], reference: str) -> RouteRecord:
        async with gate:
            student_answer, teacher_answer = await asyncio.gather(
                answer(student, greedy(f"{split}-{index}-s", messages, top_logprobs, structured, offered)),
                answer(teacher, greedy(f"{split}-{index}-t", messages, None, structured, offered)))
        progress.update()
        return RouteRecord(id=f"{split}-{seed}-{index}", group=ticket.factors.get("shape"),
                           student_text=student_answer.text, student_top=student_answer.top,
                           student_sampled=student_answer.sampled, student_tokens=student_answer.tokens,
                           student_correct=is_right(student_answer.text, reference, offered),
                           teacher_text=teacher_answer.text,
                           teacher_correct=is_right(teacher_answer.text, reference, offered),
                           teacher_completion_tokens=teacher_answer.completion_tokens, reference=reference,
                           messages=messages, structured_outputs=structured, tools=offered)

    try:
        return list(await asyncio.gather(*(one(index, *prompt) for index, prompt in enumerate(prompts))))
    finally:
        progress.close()


def demo_settings(config, with_tools: bool = False):
    """The gateway settings the harness runs on: `config`, or the embedded demo; with `tools` and no `config`, the
    demo's tool-calling pair (`kdgate serve --demo tools`), since the plain pair calls no tools."""
    from gateway.settings import DEMO_TOOLS_BACKENDS, load_settings

    return load_settings(config, **(DEMO_TOOLS_BACKENDS if with_tools and config is None else {}))


async def collect_from_settings(config, split: str, examples: int, seed: int, top_logprobs: int,
                                threads: int | None = None, structured: dict | None = None,
                                with_tools: bool = False) -> list[RouteRecord]:
    """`collect_demo` with the backends the gateway's settings describe (the embedded demo by default); `threads`
    sets each local backend's torch threads."""
    from runtime.backends.factory import open_backends

    settings = demo_settings(config, with_tools)
    if settings.teacher is None:
        raise ValueError("routing records need a teacher backend; set `teacher` in the settings")
    backends = {role: backend.model_copy(update={"threads": threads}) if threads and backend.kind == "local"
                else backend for role, backend in settings.backends().items()}
    async with open_backends(backends, settings.http) as backends:
        return await collect_demo(backends["student"], backends["teacher"], split, examples, seed, top_logprobs,
                                  structured=structured, with_tools=with_tools)
