"""The request path every generating endpoint shares: limits, the student version's lease, routing, the event
loop over the backend's stream, metrics, cost and the shadow capture.

An endpoint (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`) translates its wire request into one
`GenerationRequest` and a `RouteRequest`, and gives `Serving` an `Endpoint`: how its response and its stream's frames
look. Routing, handoff, fallback, shadow and the metrics then handle the request without knowing which endpoint it
came from.
Backends always stream; a non-streaming request is the stream collected. A stream is *primed* before the HTTP
response starts: failures before the first token (backend down, upstream 400) become a proper error status instead
of a broken 200 stream, and the route is known when the headers go out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

from pydantic import BaseModel

from gateway.cost import Bill, CostMeter
from gateway.fallback import RouteChange
from gateway.metrics import GatewayMetrics
from gateway.routing import Router, SingleBackend
from gateway.shadow.capture import Capture
from gateway.shadow.worker import ShadowWorker
from gateway.students.manager import StudentManager
from gateway.students.slot import Lease
from gateway.tools.grammar import ToolChoice
from router.policy import RouteDecision, RouteRequest
from router.reasons import Reason
from runtime.constraints.languages import constraint as constraint_of
from runtime.contract import Backend, Delta, Finish, GenerationRequest, SamplingParams, TokenLogprob
from runtime.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamProtocolError, to_envelope

# A constraint still compiling after this long is a 400 (its thread finishes and caches the language, so a retry
# is answered at once) rather than a request that hangs: several free-form tool schemas took 40 s and more.
COMPILE_BUDGET_S = 8.0
FAILED_BACKEND = {Reason.STUDENT_ERROR: "student", Reason.TEACHER_UNAVAILABLE: "teacher"}


@dataclass(frozen=True)
class ServingLimits:
    max_tokens_limit: int
    default_max_tokens: int
    max_top_logprobs: int


@dataclass(frozen=True)
class Served:
    """Who served a request and why: the `kdgate` object of every endpoint's response (gateway only)."""

    route: str
    reason: str
    model: str
    student_version: str | None = None
    handed_off_tokens: int | None = None


class StreamShapes(Protocol):
    """One streamed response's frames, each a whole `data: ...\\n\\n` event."""

    def opening(self) -> list[str]:
        """What goes out before the first token (chat: the role chunk)."""
        ...

    def delta(self, delta: Delta) -> str:
        ...

    def closing(self, finish: Finish, served: Served | None) -> list[str]:
        """The finish chunk, and the usage chunk when the client asked for it."""
        ...

    def failure(self, error: GatewayError) -> list[str]:
        """What a failure after the first frame sends (chat: one `data:` error envelope)."""
        ...

    def ending(self) -> list[str]:
        """What ends the stream, whatever happened (chat: `data: [DONE]`)."""
        ...


class DataFrames:
    """The chat-style ends of a stream, which chat and completions share: a failure is one `data:` error envelope,
    and `data: [DONE]` ends every stream."""

    def failure(self, error: GatewayError) -> list[str]:
        return [f"data: {json.dumps(to_envelope(error)[1])}\n\n"]

    def ending(self) -> list[str]:
        return ["data: [DONE]\n\n"]


class Endpoint(Protocol):
    """One request as its endpoint sees it: the model it named, where it put its constraint, and its response's
    shapes (they know the client's request: its model, its logprobs)."""

    model: str | None
    tool_choice: ToolChoice | None  # the calls the answer may make, when it may make any

    def placed(self, error: InvalidRequest) -> InvalidRequest:
        """A constraint's error named where this request put the constraint (`response_format` or
        `structured_outputs`)."""
        ...

    def response(self, request_id: str, text: str, logprobs: list[TokenLogprob], finish: Finish,
                 served: Served | None) -> BaseModel:
        ...

    def stream(self, request_id: str, created: int) -> StreamShapes:
        ...


@dataclass(frozen=True)
class _ShadowHandOver:
    capture: Capture
    discarded: tuple  # student tokens generated, then not sent (escalation)
    student_model: str
    student_version: str | None = None


@dataclass
class _LeaseOutcome:
    """One request's hold on a student version, and what it did with it (for the version's figures)."""

    lease: Lease | None
    forced: str | None
    decision: RouteDecision | None = None
    ok: bool = False
    ttft: float | None = None
    _closed: bool = False

    @property
    def version(self) -> str | None:
        """The student version of this request; None when the teacher was forced (no student took part)."""
        return self.lease.version if self.lease is not None and self.forced != "teacher" else None

    def router(self, router: Router | SingleBackend) -> Router | SingleBackend:
        if self.lease is None:
            return router
        student = self.lease.student
        return router.bound(student.backend, student.policy, student.breaker, student.handoff_min_prob)

    def student_model(self, serving: Serving) -> str:
        if self.lease is not None:
            return self.lease.student.backend.info.model
        student = serving.router.backends.get("student")
        return student.info.model if student is not None else ""

    def close(self, students: StudentManager | None) -> None:
        """Give the lease back (once), and count the request against its version unless it was forced."""
        if self._closed or self.lease is None:
            return
        self._closed = True
        self.lease.release()
        if self.forced is None and students is not None and self.decision is not None:
            failed = not self.ok or self.decision.reason == Reason.STUDENT_ERROR  # the teacher covered its failure
            students.record(self.lease, not failed, self.decision.route == "teacher",
                            self.ttft if self.decision.route == "student" else None)


@dataclass
class StreamOutcome:
    """Filled in while the stream runs: its Finish (usage), for the caller to account after the last frame."""

    finish: Finish | None = None


@dataclass(frozen=True)
class PreparedStream:
    decision: RouteDecision
    frames: AsyncIterator[str]
    outcome: StreamOutcome
    student_version: str | None = None


class Serving:
    def __init__(self, *, served_model: str, router: Router | SingleBackend, limits: ServingLimits,
                 metrics: GatewayMetrics, announce_route: bool, shadow: ShadowWorker | None = None,
                 students: StudentManager | None = None, cost: CostMeter | None = None):
        self.served_model = served_model
        self.router = router
        self.shadow = shadow
        self.students = students  # the gateway's student slot; None on an engine server (one backend)
        self.limits = limits
        self.metrics = metrics
        self.announce_route = announce_route  # the gateway says which backend served; an engine server does not
        self.cost = cost  # None: no backend prices, no cost series

    @classmethod
    def beside(cls, other: Serving) -> Serving:
        """Another endpoint over the same router, students, shadow worker, metrics and cost meter as `other`."""
        return cls(served_model=other.served_model, router=other.router, limits=other.limits, metrics=other.metrics,
                   announce_route=other.announce_route, shadow=other.shadow, students=other.students,
                   cost=other.cost)

    @property
    def backends(self) -> dict[str, Backend]:
        """The backends serving now by role (the active student version's)."""
        if self.students is None:
            return dict(self.router.backends)
        return {**self.router.backends, "student": self.students.slot.active.backend}

    def model_names(self) -> list[str]:
        """What `model` may name: the served model, each serving student version pinned (`<model>@<version>`, as
        vLLM names a LoRA adapter), and on an engine server its runtime-loaded adapters."""
        names = [self.served_model, *getattr(self.router, "adapters", {})]
        if self.students is not None:
            names += [f"{self.served_model}@{student.version}" for student in self.students.slot.serving()]
        return names

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names():
            raise ModelNotFound(f"the model `{model}` does not exist here; this server serves "
                                f"`{self.served_model}` (see GET /v1/models)")

    def _lease(self, model: str | None) -> Lease | None:
        """The request's student version: the one its `model` pins, else the slot's choice (active or canary)."""
        if self.students is None:
            return None
        pinned = model.removeprefix(f"{self.served_model}@") if model and "@" in model else None
        return self.students.slot.acquire(pinned)

    # ------------------------------------------------------------------------------------------------ entry points

    async def complete_with(self, endpoint: Endpoint, generation: GenerationRequest,
                            route_request: RouteRequest, forced: str | None, started: float
                            ) -> tuple[BaseModel, RouteDecision]:
        """The whole answer, in the endpoint's response shape."""
        lease = self._lease(endpoint.model)
        outcome = _LeaseOutcome(lease, forced)
        try:
            return await self._complete(endpoint, generation, route_request, forced, started, outcome)
        finally:
            outcome.close(self.students)

    async def _complete(self, endpoint: Endpoint, generation: GenerationRequest,
                        route_request: RouteRequest, forced: str | None, started: float, outcome: _LeaseOutcome
                        ) -> tuple[BaseModel, RouteDecision]:
        generation = await self._constrained(endpoint, generation)
        capture, generation = Capture.plan(self.shadow, generation, forced)
        decision, backend, events, discarded = await self._start(outcome.router(self.router), generation,
                                                                 route_request, forced, stream=False)
        outcome.decision = decision
        bill = Bill(discarded=len(discarded))
        text, logprobs, finish = [], [], None
        started_on = decision.route
        self.metrics.in_flight.labels(started_on).inc()
        try:
            async for event in events:
                capture.observe(event)
                if isinstance(event, Delta):
                    if event.text and not text:
                        outcome.ttft = time.monotonic() - started
                        self.metrics.ttft.labels(decision.route).observe(outcome.ttft)
                    text.append(event.text)
                    logprobs.extend(event.logprobs)
                elif isinstance(event, RouteChange):
                    decision, backend = self._hand_off(event, bill)
                    outcome.decision = decision
                else:
                    finish = event
        except GatewayError as error:
            self._count_failure(decision.route, error, stream=False)
            raise
        except asyncio.CancelledError:  # the client went away; closing `events` cancelled the backend's work
            self.metrics.requests.labels(decision.route, "cancelled", "false").inc()
            raise
        finally:
            self.metrics.in_flight.labels(started_on).dec()
            await events.aclose()
        if finish is None:
            raise UpstreamProtocolError(f"backend `{backend.info.name}` ended without finishing",
                                        backend=backend.info.name)
        self._count_success(decision, finish, started, bill, stream=False)
        outcome.ok = True
        response = endpoint.response(generation.request_id, "".join(text), logprobs, finish,
                                   self._served(decision, backend, outcome.version, bill))
        capture.finish(generation, decision, discarded, outcome.student_model(self), outcome.version)
        return response, decision

    async def stream_with(self, endpoint: Endpoint, generation: GenerationRequest,
                          route_request: RouteRequest, forced: str | None, started: float) -> PreparedStream:
        """The primed stream: its route is known, its frames are the endpoint's."""
        lease = self._lease(endpoint.model)
        outcome = _LeaseOutcome(lease, forced)
        try:
            return await self._stream(endpoint, generation, route_request, forced, started, outcome)
        except BaseException:
            outcome.close(self.students)  # on success the stream's frames close it after their last byte
            raise

    async def _stream(self, endpoint: Endpoint, generation: GenerationRequest,
                      route_request: RouteRequest, forced: str | None, started: float, outcome: _LeaseOutcome
                      ) -> PreparedStream:
        generation = await self._constrained(endpoint, generation)
        capture, generation = Capture.plan(self.shadow, generation, forced)
        decision, backend, events, discarded = await self._start(outcome.router(self.router), generation,
                                                                 route_request, forced, stream=True)
        outcome.decision = decision
        bill = Bill(discarded=len(discarded))
        try:
            first = await anext(events)
            while isinstance(first, RouteChange):  # a fallback before any content: the headers name who serves
                capture.observe(first)
                decision, backend = self._hand_off(first, bill)
                outcome.decision = decision
                first = await anext(events)
        except StopAsyncIteration:
            error = UpstreamProtocolError(f"backend `{backend.info.name}` sent nothing", backend=backend.info.name)
            self._count_failure(decision.route, error, stream=True)
            raise error from None
        except GatewayError as error:
            self._count_failure(decision.route, error, stream=True)
            raise
        stream_outcome = StreamOutcome()
        frames = self._frames(endpoint, generation, decision, backend, first, events, started,
                              _ShadowHandOver(capture, discarded, outcome.student_model(self), outcome.version),
                              stream_outcome, outcome, bill)
        return PreparedStream(decision=decision, frames=frames, outcome=stream_outcome,
                              student_version=outcome.version)

    async def _start(self, router: Router | SingleBackend, generation: GenerationRequest,
                     route_request: RouteRequest, forced: str | None, stream: bool):
        """The router's choice; a failure before any backend is chosen (an invalid request for the student seen
        during hold-back) is counted against the student."""
        try:
            return await router.start(generation, route_request, forced)
        except GatewayError as error:
            self._count_failure("student", error, stream)
            raise

    # ------------------------------------------------------------------------------------------------ preparation

    async def _constrained(self, endpoint: Endpoint, generation: GenerationRequest) -> GenerationRequest:
        """Behind the gateway, the answer's constraint as one regular language (runtime/constraints): both
        backends get its grammar, and a handoff gives the teacher the grammar of the rest. An engine server passes
        the client's constraint to its backend as vLLM's server does."""
        tools = endpoint.tool_choice
        if tools is None and (generation.structured_outputs is None or not isinstance(self.router, Router)):
            return generation
        try:
            async with asyncio.timeout(COMPILE_BUDGET_S):  # the thread goes on, and caches what it compiles
                if tools is not None:  # the calls' language is the gateway's own: compiled on an engine server too
                    constraint = await asyncio.to_thread(tools.constraint, generation.structured_outputs)
                else:
                    constraint = await asyncio.to_thread(constraint_of, generation.structured_outputs)
        except InvalidRequest as error:
            raise endpoint.placed(error) from None
        except TimeoutError:
            where = "tools" if tools is not None else "response_format"
            raise endpoint.placed(InvalidRequest(
                f"the grammar of `{where}` took over {COMPILE_BUDGET_S:g} s to compile (free-form schemas such as "
                "`{}` cost the most) and goes on compiling: retry shortly, or give each schema its `properties`",
                parameter=where)) from None
        return replace(generation, structured_outputs=constraint.structured_outputs, constraint=constraint)

    # ------------------------------------------------------------------------------------------------ streaming

    async def _frames(self, endpoint: Endpoint, generation: GenerationRequest, decision: RouteDecision,
                      backend: Backend, first, events, started: float, shadow: _ShadowHandOver,
                      outcome: StreamOutcome, lease: _LeaseOutcome, bill: Bill) -> AsyncIterator[str]:
        """SSE frames: the endpoint's opening, content chunks, its closing (finish, optional usage) or its failure,
        and its ending (chat's `[DONE]`)."""
        try:
            async for frame in self._stream_frames(endpoint, generation, decision, backend, first, events, started,
                                                   shadow, outcome, lease, bill):
                yield frame
        finally:
            lease.close(self.students)

    async def _stream_frames(self, endpoint: Endpoint, generation: GenerationRequest, decision: RouteDecision,
                             backend: Backend, first, events, started: float, shadow: _ShadowHandOver,
                             outcome: StreamOutcome, lease: _LeaseOutcome, bill: Bill) -> AsyncIterator[str]:
        route = decision.route
        frames = endpoint.stream(generation.request_id, int(time.time()))
        served = self._served(decision, backend, shadow.student_version, bill)
        ttft, itl = self.metrics.ttft.labels(route), self.metrics.itl.labels(route)

        self.metrics.in_flight.labels(route).inc()
        finished = completed = False
        last_content_at = None
        try:
            for frame in frames.opening():
                yield frame
            event = first
            while True:
                shadow.capture.observe(event)
                if isinstance(event, Delta):
                    now = time.monotonic()
                    if event.text:
                        if last_content_at is None:
                            lease.ttft = now - started
                            ttft.observe(lease.ttft)
                        else:
                            itl.observe(now - last_content_at)
                        last_content_at = now
                    yield frames.delta(event)
                elif isinstance(event, RouteChange):
                    decision, backend = self._hand_off(event, bill)
                    lease.decision = decision
                    served = self._served(decision, backend, shadow.student_version, bill)
                elif isinstance(event, Finish):
                    finished = completed = lease.ok = True
                    outcome.finish = event
                    self._count_success(decision, event, started, bill, stream=True)
                    for frame in frames.closing(event, served):
                        yield frame
                    break
                event = await anext(events)
        except GatewayError as error:
            finished = True
            self._count_failure(decision.route, error, stream=True)
            for frame in frames.failure(error):
                yield frame
        except StopAsyncIteration:
            finished = True
            error = UpstreamProtocolError(f"backend `{backend.info.name}` ended the stream without finishing",
                                          backend=backend.info.name)
            self._count_failure(decision.route, error, stream=True)
            for frame in frames.failure(error):
                yield frame
        finally:
            self.metrics.in_flight.labels(route).dec()
            if not finished:
                self.metrics.requests.labels(route, "cancelled", "true").inc()
            await events.aclose()  # cancels the backend's work when the client left early
        for frame in frames.ending():
            yield frame
        if completed:  # the client has its whole answer: only now is shadow work queued
            shadow.capture.finish(generation, decision, shadow.discarded, shadow.student_model,
                                  shadow.student_version)

    def _hand_off(self, change: RouteChange, bill: Bill) -> tuple[RouteDecision, Backend]:
        """Another backend takes over the answer: a handoff, or a fallback from one that failed."""
        bill.observe(change)
        reason = change.decision.reason
        if reason == Reason.HANDOFF:
            self.metrics.handoffs.inc()
        if change.cause is not None:
            self.metrics.count_fallback(reason, FAILED_BACKEND.get(reason, "unknown"), change.cause)
        self.metrics.decisions.labels(change.decision.route, reason).inc()
        return change.decision, change.backend

    def _served(self, decision: RouteDecision, backend: Backend, student_version: str | None, bill: Bill
                ) -> Served | None:
        if not self.announce_route:
            return None
        return Served(route=decision.route, reason=decision.reason, model=backend.info.model,
                      student_version=student_version, handed_off_tokens=bill.handed_off)

    # ------------------------------------------------------------------------------------------------ metrics

    def _count_success(self, decision: RouteDecision, finish: Finish, started: float, bill: Bill, stream: bool
                       ) -> None:
        self.router.served(decision)
        route = decision.route
        self.metrics.requests.labels(route, "ok", str(stream).lower()).inc()
        self.metrics.e2e.labels(route).observe(time.monotonic() - started)
        self.metrics.prompt_tokens.labels(route).inc(finish.prompt_tokens)
        self.metrics.completion_tokens.labels(route).inc(finish.completion_tokens)
        if self.cost is not None:
            self.cost.charge(bill, route, finish)

    def _count_failure(self, route: str, error: GatewayError, stream: bool) -> None:
        self.metrics.requests.labels(route, "error", str(stream).lower()).inc()
        self.metrics.errors.labels(route, type(error).__name__).inc()


def sampling_params(request, *, max_tokens: int, fit_to_context: bool, top_logprobs: int | None) -> SamplingParams:
    """The sampling fields both endpoints share, with the same names and meanings (OpenAI's and vLLM's), read from
    either wire request; the token limit and logprobs come from the endpoint's own fields."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=tuple(request.stop or ()),
        top_logprobs=top_logprobs,
        fit_to_context=fit_to_context,
        ignore_eos=request.ignore_eos,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        min_p=request.min_p or 0.0,
        top_k=max(request.top_k or 0, 0),  # vLLM's -1 and 0 both keep every token
        logit_bias=tuple(sorted({int(token): bias for token, bias in (request.logit_bias or {}).items()}.items())),
        stop_token_ids=tuple(dict.fromkeys(request.stop_token_ids or ())),
    )
