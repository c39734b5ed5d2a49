"""Chat serving: request validation against limits, backend choice, and the OpenAI response and stream shapes.

The same code serves the gateway (student and teacher behind a routing policy) and `kdgate engine` (one backend,
no routing). Backends always stream; a non-streaming request is the stream collected. A stream is *primed* before
the HTTP response starts: failures before the first token (backend down, upstream 400) become a proper error
status instead of a broken 200 stream, and the route is known when the headers go out.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from gateway.chat import protocol
from gateway.chat.formats import placed
from gateway.chat.frames import ChunkFrames
from gateway.cost import Bill, CostMeter
from gateway.fallback import RouteChange
from gateway.metrics import GatewayMetrics
from gateway.routing import Router, SingleBackend
from gateway.shadow.capture import Capture
from gateway.shadow.worker import ShadowWorker
from gateway.students.manager import StudentManager
from gateway.students.slot import Lease
from router.policy import RouteDecision, RouteRequest
from router.reasons import Reason
from runtime.constraints.languages import constraint as constraint_of
from runtime.contract import Backend, Delta, Finish, GenerationRequest, SamplingParams
from runtime.contract import TokenLogprob as EngineTokenLogprob
from runtime.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamProtocolError, to_envelope

FAILED_BACKEND = {Reason.STUDENT_ERROR: "student", Reason.TEACHER_UNAVAILABLE: "teacher"}


@dataclass(frozen=True)
class ServingLimits:
    max_tokens_limit: int
    default_max_tokens: int
    max_top_logprobs: int


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

    def student_model(self, serving: ChatServing) -> str:
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


class ChatServing:
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

    def _lease(self, model: str | None) -> Lease | None:
        """The request's student version: the one its `model` pins, else the slot's choice (active or canary)."""
        if self.students is None:
            return None
        pinned = model.removeprefix(f"{self.served_model}@") if model and "@" in model else None
        return self.students.slot.acquire(pinned)

    # ------------------------------------------------------------------------------------------------ entry points

    async def complete(self, request: protocol.ChatCompletionRequest, forced: str | None, started: float
                       ) -> tuple[protocol.ChatCompletionResponse, RouteDecision]:
        generation, route_request = self._prepare(request)
        lease = self._lease(request.model)
        outcome = _LeaseOutcome(lease, forced)
        try:
            return await self._complete(request, generation, route_request, forced, started, outcome)
        finally:
            outcome.close(self.students)

    async def _complete(self, request: protocol.ChatCompletionRequest, generation: GenerationRequest,
                        route_request: RouteRequest, forced: str | None, started: float, outcome: _LeaseOutcome
                        ) -> tuple[protocol.ChatCompletionResponse, RouteDecision]:
        generation = await self._constrained(request, generation)
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
        response = protocol.ChatCompletionResponse(
            id=f"chatcmpl-{generation.request_id}",
            model=request.model or self.served_model,
            choices=[protocol.ChatCompletionChoice(
                message=protocol.AssistantMessage(content="".join(text)),
                logprobs=self._wire_logprobs(logprobs, request),
                finish_reason=finish.finish_reason,
                stop_reason=finish.stop_reason,
            )],
            usage=_usage(finish),
            prompt_logprobs=_wire_prompt_logprobs(finish) if request.prompt_logprobs is not None else None,
            prompt_token_ids=list(finish.prompt_token_ids) if request.return_token_ids and finish.prompt_token_ids
            else None,
            kdgate=self._route_info(decision, backend, outcome.version, bill),
        )
        capture.finish(generation, decision, discarded, outcome.student_model(self), outcome.version)
        return response, decision

    async def stream(self, request: protocol.ChatCompletionRequest, forced: str | None, started: float
                     ) -> PreparedStream:
        generation, route_request = self._prepare(request)
        lease = self._lease(request.model)
        outcome = _LeaseOutcome(lease, forced)
        try:
            return await self._stream(request, generation, route_request, forced, started, outcome)
        except BaseException:
            outcome.close(self.students)  # on success the stream's frames close it after their last byte
            raise

    async def _stream(self, request: protocol.ChatCompletionRequest, generation: GenerationRequest,
                      route_request: RouteRequest, forced: str | None, started: float, outcome: _LeaseOutcome
                      ) -> PreparedStream:
        generation = await self._constrained(request, generation)
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
        frames = self._frames(request, generation, decision, backend, first, events, started,
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

    async def _constrained(self, request: protocol.ChatCompletionRequest, generation: GenerationRequest
                           ) -> GenerationRequest:
        """Behind the gateway, the answer's constraint as one regular language (runtime/constraints): both
        backends get its grammar, and a handoff gives the teacher the grammar of the rest. An engine server passes
        the client's constraint to its backend as vLLM's server does."""
        if generation.structured_outputs is None or not isinstance(self.router, Router):
            return generation
        try:
            constraint = await asyncio.to_thread(constraint_of, generation.structured_outputs)
        except InvalidRequest as error:
            raise placed(error, response_format=request.structured_outputs is None) from None
        return replace(generation, structured_outputs=constraint.structured_outputs, constraint=constraint)

    def _prepare(self, request: protocol.ChatCompletionRequest) -> tuple[GenerationRequest, RouteRequest]:
        if request.model is not None and request.model not in self.model_names():
            raise ModelNotFound(f"the model `{request.model}` does not exist here; this server serves "
                                f"`{self.served_model}` (see GET /v1/models)")
        generation = self._generation_request(request)
        route_request = RouteRequest(request_id=generation.request_id, message_count=len(request.messages),
                                     prompt_chars=sum(len(message["content"]) for message in generation.messages),
                                     model=request.model)
        return generation, route_request

    def _generation_request(self, request: protocol.ChatCompletionRequest) -> GenerationRequest:
        limits = self.limits
        max_tokens = request.requested_max_tokens()
        if max_tokens is not None and max_tokens > limits.max_tokens_limit:
            field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            raise InvalidRequest(f"`{field}` must be between 1 and {limits.max_tokens_limit}, got {max_tokens}; "
                                 "lower it or raise `KDGATE_MAX_TOKENS_LIMIT`", parameter=field)
        top_logprobs = None
        if request.logprobs:
            top_logprobs = request.top_logprobs or 0
            if top_logprobs > limits.max_top_logprobs:
                raise InvalidRequest(f"`top_logprobs` must be at most {limits.max_top_logprobs}, got {top_logprobs}; "
                                     "lower it or raise `KDGATE_MAX_TOP_LOGPROBS`", parameter="top_logprobs")
        if request.prompt_logprobs is not None and request.prompt_logprobs > limits.max_top_logprobs:
            raise InvalidRequest(f"`prompt_logprobs` must be at most {limits.max_top_logprobs}",
                                 parameter="prompt_logprobs")
        temperature = 1.0 if request.temperature is None else request.temperature
        sampling = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else limits.default_max_tokens,
            temperature=temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stop=tuple(request.stop or ()),
            top_logprobs=top_logprobs,
            fit_to_context=max_tokens is None,
            ignore_eos=request.ignore_eos,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            min_p=request.min_p or 0.0,
            top_k=max(request.top_k or 0, 0),  # vLLM's -1 and 0 both keep every token
            logit_bias=tuple(sorted({int(token): bias for token, bias in (request.logit_bias or {}).items()}.items())),
            stop_token_ids=tuple(dict.fromkeys(request.stop_token_ids or ())),
        )
        return GenerationRequest(
            request_id=uuid.uuid4().hex,
            messages=tuple({"role": message.role, "content": message.text()} | ({"name": message.name} if message.name
                                                                                 else {})
                           for message in request.messages),
            sampling=sampling,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            prompt_logprobs=request.prompt_logprobs,
            token_ids=request.logprobs and request.return_tokens_as_token_ids,  # else an HTTP backend gives texts
            structured_outputs=request.structured_spec(),
        )

    # ------------------------------------------------------------------------------------------------ streaming

    async def _frames(self, request: protocol.ChatCompletionRequest, generation: GenerationRequest,
                      decision: RouteDecision, backend: Backend, first, events, started: float,
                      shadow: _ShadowHandOver, outcome: StreamOutcome, lease: _LeaseOutcome, bill: Bill
                      ) -> AsyncIterator[str]:
        """SSE frames: role chunk, content chunks, finish chunk, optional usage chunk, then `[DONE]`."""
        try:
            async for frame in self._stream_frames(request, generation, decision, backend, first, events, started,
                                                   shadow, outcome, lease, bill):
                yield frame
        finally:
            lease.close(self.students)

    async def _stream_frames(self, request: protocol.ChatCompletionRequest, generation: GenerationRequest,
                             decision: RouteDecision, backend: Backend, first, events, started: float,
                             shadow: _ShadowHandOver, outcome: StreamOutcome, lease: _LeaseOutcome, bill: Bill
                             ) -> AsyncIterator[str]:
        route = decision.route
        chunk_id, created = f"chatcmpl-{generation.request_id}", int(time.time())
        model = request.model or self.served_model
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        route_info = self._route_info(decision, backend, shadow.student_version, bill)

        frames = ChunkFrames(chunk_id, created, model)
        frame, plain = frames.frame, not request.logprobs
        ttft, itl = self.metrics.ttft.labels(route), self.metrics.itl.labels(route)

        self.metrics.in_flight.labels(route).inc()
        finished = completed = False
        last_content_at = None
        try:
            yield frame([protocol.ChatCompletionChunkChoice(delta=protocol.DeltaMessage(role="assistant", content=""))])
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
                    if plain:  # nearly every chunk of a stream: the template, not a model per token
                        yield frames.content(event.text)
                    else:
                        yield frame([protocol.ChatCompletionChunkChoice(
                            delta=protocol.DeltaMessage(content=event.text),
                            logprobs=self._wire_logprobs(event.logprobs, request))])
                elif isinstance(event, RouteChange):
                    decision, backend = self._hand_off(event, bill)
                    lease.decision = decision
                    route_info = self._route_info(decision, backend, shadow.student_version, bill)
                elif isinstance(event, Finish):
                    finished = completed = lease.ok = True
                    outcome.finish = event
                    self._count_success(decision, event, started, bill, stream=True)
                    yield frame([protocol.ChatCompletionChunkChoice(
                        delta=protocol.DeltaMessage(), finish_reason=event.finish_reason,
                        stop_reason=event.stop_reason)], kdgate=route_info)
                    if include_usage:
                        yield frame([], usage=_usage(event), kdgate=route_info)
                    break
                event = await anext(events)
        except GatewayError as error:
            finished = True
            self._count_failure(decision.route, error, stream=True)
            yield f"data: {json.dumps(to_envelope(error)[1])}\n\n"
        except StopAsyncIteration:
            finished = True
            error = UpstreamProtocolError(f"backend `{backend.info.name}` ended the stream without finishing",
                                          backend=backend.info.name)
            self._count_failure(decision.route, error, stream=True)
            yield f"data: {json.dumps(to_envelope(error)[1])}\n\n"
        finally:
            self.metrics.in_flight.labels(route).dec()
            if not finished:
                self.metrics.requests.labels(route, "cancelled", "true").inc()
            await events.aclose()  # cancels the backend's work when the client left early
        yield "data: [DONE]\n\n"
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

    # ------------------------------------------------------------------------------------------------ shapes

    def _wire_logprobs(self, logprobs, request: protocol.ChatCompletionRequest) -> protocol.ChoiceLogprobs | None:
        if not request.logprobs:
            return None
        keep = request.top_logprobs or 0
        as_ids = request.return_tokens_as_token_ids
        return protocol.ChoiceLogprobs(content=[_wire_token(entry, keep, as_ids) for entry in logprobs])

    def _route_info(self, decision: RouteDecision, backend: Backend, student_version: str | None, bill: Bill
                    ) -> protocol.RouteInfo | None:
        if not self.announce_route:
            return None
        return protocol.RouteInfo(route=decision.route, reason=decision.reason, model=backend.info.model,
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


def _wire_token(entry: EngineTokenLogprob, keep: int, as_ids: bool = False) -> protocol.TokenLogprob:
    def text(token: str, token_id: int | None) -> str:
        return f"token_id:{token_id}" if as_ids and token_id is not None else token

    token = text(entry.token, entry.token_id)
    return protocol.TokenLogprob(  # bytes: the token's own text, as vLLM sends them under `token_id:<id>` tokens too
        token=token, logprob=entry.logprob, bytes=list(entry.token.encode("utf-8")),
        top_logprobs=[protocol.TopLogprob(token=(alternative := text(top.token, top.token_id)), logprob=top.logprob,
                                          bytes=list(alternative.encode("utf-8")))
                      for top in entry.top_logprobs[:keep]],
    )


def _usage(finish: Finish) -> protocol.Usage:
    return protocol.Usage(prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens,
                          total_tokens=finish.prompt_tokens + finish.completion_tokens)


def _wire_prompt_logprobs(finish: Finish) -> list[dict[str, protocol.PromptLogprob] | None] | None:
    if finish.prompt_logprobs is None:
        return None
    return [None if position is None else {
        str(token_id): protocol.PromptLogprob(logprob=logprob, rank=rank, decoded_token=text)
        for token_id, (logprob, rank, text) in position.entries.items()} for position in finish.prompt_logprobs]
