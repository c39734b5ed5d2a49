"""The gateway side of mid-stream handoff (`router.handoff`): watch the student's stream token by token; on a
collapsing token, stop the student and stream the teacher's continuation of the same assistant message.

The client's stream stays one answer: the student's released text, then the teacher's continuation (vLLM's
`continue_final_message`, which the local engine speaks too; for a completions request, the prompt and the released
text as the teacher's raw prompt). A `RouteChange` event tells serving who finished the answer, for the final
chunk's `kdgate` object and the metrics. Usage: completion tokens are the student's released tokens plus the
teacher's; prompt tokens are what the teacher was sent (the prompt and the handed-off text), since the cancelled
student never reports its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from gateway.fallback import RouteChange, teacher_or_student
from router.handoff import HandoffRule
from router.policy import RouteDecision
from router.reasons import Reason
from runtime.constraints.automaton import NotInLanguage
from runtime.contract import Backend, Delta, Event, Finish, GenerationRequest

log = logging.getLogger("kdgate.handoff")


def continuation(generation: GenerationRequest, text: str, tokens: int) -> GenerationRequest:
    """The teacher's request: the same conversation with `text` as the (start of the) assistant's reply; for a
    completions request, the prompt followed by `text` as one raw prompt (there is no message to continue). With
    nothing released yet (a handoff at the first token) it is the client's own request: an empty assistant message
    to continue is one the client never sent, and servers refuse it. A constrained answer's continuation is
    constrained by the grammar of its rest (vLLM would start the grammar afresh after the text); `NotInLanguage`
    when the text cannot start a document of it."""
    if not text:
        return replace(generation, request_id=f"{generation.request_id}-handoff")
    sampling = replace(generation.sampling, max_tokens=max(1, generation.sampling.max_tokens - tokens))
    structured = (generation.constraint.after(text) if generation.constraint is not None
                  else generation.structured_outputs)
    handed = replace(generation, request_id=f"{generation.request_id}-handoff", sampling=sampling,
                     structured_outputs=structured)
    if generation.prompt is not None:
        return replace(handed, prompt=generation.prompt + text)
    messages = list(generation.messages)
    if generation.continue_final_message:  # the client was already continuing an assistant message
        messages[-1] = messages[-1] | {"content": messages[-1]["content"] + text}
    else:
        messages.append({"role": "assistant", "content": text})
    return replace(handed, messages=tuple(messages), add_generation_prompt=False, continue_final_message=True)


def _continuation_or_none(generation: GenerationRequest, text: str, tokens: int) -> GenerationRequest | None:
    """The teacher's request; None when the student's text breaks the answer's constraint (a backend that does not
    apply grammars): the teacher could not complete it validly, so the student goes on."""
    try:
        return continuation(generation, text, tokens)
    except NotInLanguage as error:
        log.error("no handoff for request %s: %s", generation.request_id, error)
        return None


def split_before(delta: Delta, index: int) -> tuple[Delta | None, Delta]:
    """A delta of several tokens (a busy vLLM packs them into one chunk) split before its token `index`, the first
    collapsing one: the sure tokens before it are released as the student's, as they would be one chunk each, and
    the handoff comes where the rule says. (None, delta) when the tokens' own texts do not make the delta's text
    (the cut could not be placed in it: the handoff comes before the whole delta, as before)."""
    entries = delta.logprobs
    if "".join(entry.token for entry in entries) != delta.text:
        return None, delta
    head = "".join(entry.token for entry in entries[:index])
    return Delta(head, entries[:index]), Delta(delta.text[len(head):], entries[index:])


async def with_handoff(student_events: AsyncIterator[Event | RouteChange], generation: GenerationRequest,
                       student: Backend, teacher: Backend,
                       open_teacher: Callable[[GenerationRequest], AsyncIterator[Event]], rule: HandoffRule
                       ) -> AsyncIterator[Event | RouteChange]:
    """The student's events until one carries a collapsing token; then the teacher's continuation. The student's
    stream stays open until the teacher has started: if the teacher fails first, the student finishes the answer
    it had started (`teacher_unavailable`). A stream that has already changed route is passed on unwatched."""
    released_text: list[str] = []
    released_tokens = 0
    teacher_finishes = False
    try:
        async for event in student_events:
            if isinstance(event, RouteChange):  # the student failed before its first token: the teacher serves
                yield event
                async for rest in student_events:
                    yield rest
                return
            if isinstance(event, Delta):
                collapse = next((index for index, entry in enumerate(event.logprobs)
                                 if rule.collapses(entry.logprob)), None)
                if collapse:  # sure tokens before it in the same chunk
                    sure, event = split_before(event, collapse)
                    if sure is not None:
                        released_text.append(sure.text)
                        released_tokens += len(sure.logprobs)
                        collapse = 0
                        yield sure
                collapsed_at = None if collapse is None else event.logprobs[collapse].logprob
                continued_request = None
                if collapsed_at is not None:
                    continued_request = _continuation_or_none(generation, "".join(released_text), released_tokens)
                if continued_request is not None:
                    decision = RouteDecision("teacher", Reason.HANDOFF, score=math.exp(collapsed_at),
                                             threshold=rule.min_prob)
                    teacher_events = open_teacher(continued_request)
                    async for continued in teacher_or_student(teacher_events, student, [event], student_events):
                        if isinstance(continued, RouteChange):  # the teacher could not: the student goes on
                            decision = None
                        elif decision is not None:  # the teacher's first event
                            yield RouteChange(decision, teacher, released_tokens)
                            decision, teacher_finishes = None, True
                        if teacher_finishes and isinstance(continued, Finish):
                            continued = replace(continued,
                                                completion_tokens=continued.completion_tokens + released_tokens)
                        yield continued
                    return
                released_text.append(event.text)
                released_tokens += len(event.logprobs)
            yield event
            if isinstance(event, Finish):
                return
    finally:
        await student_events.aclose()
