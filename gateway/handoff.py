"""The gateway side of mid-stream handoff (`router.handoff`): watch the student's stream token by token; on a
collapsing token, stop the student and stream the teacher's continuation of the same assistant message.

The client's stream stays one answer: the student's released text, then the teacher's continuation (vLLM's
`continue_final_message`, which the local engine speaks too). A `RouteChange` event tells serving who finished
the answer, for the final chunk's `kdgate` object and the metrics. Usage: completion tokens are the student's
released tokens plus the teacher's; prompt tokens are what the teacher was sent (the prompt and the handed-off
text), since the cancelled student never reports its own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from gateway.backends.base import Backend, Delta, Event, Finish, GenerationRequest
from router.handoff import HandoffRule
from router.policy import RouteDecision


@dataclass(frozen=True)
class RouteChange:
    """Emitted once, between the student's last released event and the teacher's first."""

    decision: RouteDecision
    backend: Backend
    handed_off_tokens: int  # student tokens the client received


def continuation(generation: GenerationRequest, text: str, tokens: int) -> GenerationRequest:
    """The teacher's request: the same conversation with `text` as the (start of the) assistant's reply."""
    messages = list(generation.messages)
    if generation.continue_final_message:  # the client was already continuing an assistant message
        messages[-1] = messages[-1] | {"content": messages[-1]["content"] + text}
    else:
        messages.append({"role": "assistant", "content": text})
    sampling = replace(generation.sampling, max_tokens=max(1, generation.sampling.max_tokens - tokens))
    return replace(generation, request_id=f"{generation.request_id}-handoff", messages=tuple(messages),
                   sampling=sampling, add_generation_prompt=False, continue_final_message=True)


async def with_handoff(student_events: AsyncIterator[Event], generation: GenerationRequest, teacher: Backend,
                       rule: HandoffRule) -> AsyncIterator[Event | RouteChange]:
    """The student's events until one carries a collapsing token; then the teacher's continuation."""
    released_text: list[str] = []
    released_tokens = 0
    collapsed_at = None
    try:
        async for event in student_events:
            if isinstance(event, Delta):
                collapsed_at = next((entry.logprob for entry in event.logprobs if rule.collapses(entry.logprob)),
                                    None)
                if collapsed_at is not None:
                    break
                released_text.append(event.text)
                released_tokens += len(event.logprobs)
            yield event
            if isinstance(event, Finish):
                return
        else:
            return  # ended without a Finish: serving reports the broken stream
    finally:
        await student_events.aclose()  # on handoff this cancels the student's remaining work
    decision = RouteDecision("teacher", "handoff", score=math.exp(collapsed_at), threshold=rule.min_prob)
    yield RouteChange(decision, teacher, released_tokens)
    async for event in teacher.generate(continuation(generation, "".join(released_text), released_tokens)):
        if isinstance(event, Finish):
            event = replace(event, completion_tokens=event.completion_tokens + released_tokens)
        yield event
