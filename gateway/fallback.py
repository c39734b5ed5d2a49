"""Serving around a failed backend, as transformations of event streams.

| the failure | what the client gets | reason |
|---|---|---|
| a backend sends nothing within its first-token deadline | that backend failed (`UpstreamTimeout`) | |
| the student fails before its first token | the teacher's answer | `student_error` |
| the teacher fails before its first token, after the student answered (escalation or handoff) | the student's own answer | `teacher_unavailable` |
| a backend answers 4xx (`UpstreamRejected`) or the request is invalid for it | that error, as the client's | |
| a forced route's backend fails | that error | |
| a stream breaks after its first token | one SSE error event, then `[DONE]` | |

A switch is announced with a `RouteChange` event before the other backend's first event, carrying the failure
that caused it, so serving counts it against the backend that failed. The stream being replaced is kept open until
the other backend has produced its first event, so that a second failure can still fall back to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from router.policy import RouteDecision
from router.reasons import Reason
from runtime.contract import Backend, Delta, Event, Finish
from runtime.errors import GatewayError, InvalidRequest, UpstreamProtocolError, UpstreamRejected, UpstreamTimeout

log = logging.getLogger("kdgate.fallback")

CLIENT_ERRORS = (InvalidRequest, UpstreamRejected)


@dataclass(frozen=True)
class RouteChange:
    """Emitted once, between the last event of one backend and the first of the next."""

    decision: RouteDecision
    backend: Backend
    handed_off_tokens: int = 0  # student tokens the client already has (a handoff)
    cause: GatewayError | None = None  # the failure that made the switch, when it was a fallback


def is_client_error(error: GatewayError) -> bool:
    """The request itself was wrong for the backend: the other backend would refuse it too."""
    return isinstance(error, CLIENT_ERRORS)


async def with_deadline(events: AsyncIterator[Event], seconds: float | None, backend: str,
                        stall_seconds: float | None = None) -> AsyncIterator[Event]:
    """`events`, failing with `UpstreamTimeout` if the first one has not arrived within `seconds`, or if, after it,
    `stall_seconds` pass without the next."""
    try:
        try:
            async with asyncio.timeout(seconds):  # not wait_for: on 3.11 it can swallow the client's cancellation
                first = await anext(events)
        except TimeoutError:
            raise UpstreamTimeout(f"backend `{backend}` sent nothing within its first-token deadline of {seconds:g} "
                                  f"s; check that it is healthy or raise `{backend}.first_token_timeout_s`",
                                  backend=backend) from None
        except StopAsyncIteration:
            raise UpstreamProtocolError(f"backend `{backend}` sent nothing", backend=backend) from None
        yield first
        if isinstance(first, Finish):
            return
        if stall_seconds is None:
            async for event in events:
                yield event
            return
        while True:
            try:
                async with asyncio.timeout(stall_seconds):  # around the wait only, never around the yield
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(f"backend `{backend}` went silent mid-answer for {stall_seconds:g} s (its "
                                      f"stall deadline, `{backend}.stall_timeout_s`); check that it is healthy",
                                      backend=backend) from None
            yield event
    finally:
        await events.aclose()


async def first_event(events: AsyncIterator[Event]) -> Event:
    """The stream's first event; on failure the stream is closed and the error raised."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        await events.aclose()
        raise UpstreamProtocolError("a backend ended its stream before sending anything", backend="unknown") \
            from None
    except BaseException:
        await events.aclose()
        raise


async def chain(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """`first`, then `rest`; closing this closes `rest`."""
    try:
        yield first
        if not isinstance(first, Finish):
            async for event in rest:
                yield event
    finally:
        await rest.aclose()


async def student_or_teacher(student_events: AsyncIterator[Event], teacher: Backend,
                             open_teacher: Callable[[], AsyncIterator[Event]],
                             continue_teacher: Callable[[str, int], AsyncIterator[Event] | None] | None = None
                             ) -> AsyncIterator[Event | RouteChange]:
    """The student's stream; if it fails before its first event (for a reason that is not the client's), the
    teacher's, announced by a `student_error` `RouteChange`. If it fails mid-answer (a replica killed, wedged past
    its stall deadline), `continue_teacher(sent text, sent tokens)` gives the teacher's continuation of what the
    client already has, so the answer still ends whole; None from it (or no such callable): the error stands."""
    try:
        first = await first_event(student_events)
    except GatewayError as error:
        if is_client_error(error):
            raise
        yield RouteChange(RouteDecision("teacher", Reason.STUDENT_ERROR), teacher, cause=error)
        async for event in _whole(open_teacher()):
            yield event
        return
    sent: list[str] = []
    tokens = 0
    try:
        async for event in chain(first, student_events):
            if isinstance(event, Delta):
                sent.append(event.text)
                tokens += len(event.logprobs)
            yield event
    except GatewayError as error:
        continued = None if is_client_error(error) or continue_teacher is None else continue_teacher(
            "".join(sent), tokens)
        if continued is None:
            raise
        log.warning("the student failed mid-answer after %d tokens (%s); the teacher continues it", tokens, error)
        yield RouteChange(RouteDecision("teacher", Reason.STUDENT_ERROR), teacher, handed_off_tokens=tokens,
                          cause=error)
        async for event in _whole(continued):
            yield replace(event, completion_tokens=event.completion_tokens + tokens) if isinstance(
                event, Finish) else event


async def _whole(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()


async def teacher_or_student(teacher_events: AsyncIterator[Event], student: Backend, held: Sequence[Event],
                             student_rest: AsyncIterator[Event], on_teacher: Callable[[], None] = lambda: None
                             ) -> AsyncIterator[Event | RouteChange]:
    """The teacher's stream replacing the student's, whose `held` events the client has not seen. If the teacher
    fails before its first event (not the client's fault), the student's answer after all: `held`, then
    `student_rest`, announced by a `teacher_unavailable` `RouteChange`. `student_rest` is closed either way."""
    try:
        try:
            first = await first_event(teacher_events)
        except GatewayError as error:
            if is_client_error(error):
                raise
            yield RouteChange(RouteDecision("student", Reason.TEACHER_UNAVAILABLE), student, cause=error)
            for event in held:
                yield event
                if isinstance(event, Finish):
                    return
            async for event in student_rest:
                yield event
            return
        await student_rest.aclose()  # the teacher is answering: the student's remaining work is cancelled
        on_teacher()
        async for event in chain(first, teacher_events):
            yield event
    finally:
        await student_rest.aclose()
