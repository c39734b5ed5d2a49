"""The routing seam: per request, a forced route (the `x-kdgate-force` header) wins, else the policy decides.

`Router.start` returns the chosen backend's event stream. For a policy with a `HoldBack` it first runs the
student and holds its first N tokens back from the client: when the policy keeps the student those events are
replayed, in order, ahead of the rest of the student's stream; when it escalates, the student is cancelled (its
tokens never reach the client) and the teacher starts from the original request. Either way the caller sees one
backend's stream, so the client gets one well-formed answer and usage counts exactly what it received.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import NamedTuple

from gateway.breaker import CircuitBreaker, guarded
from gateway.fallback import is_client_error, student_or_teacher, teacher_or_student, with_deadline
from gateway.handoff import continuation, with_handoff
from gateway.limits import capped
from gateway.metrics import GatewayMetrics
from gateway.settings import RoutingSettings
from router.handoff import HandoffRule
from router.online import OnlineSettings
from router.policy import FixedRoute, HoldBack, RandomRoute, RouteDecision, RouteRequest, RoutingPolicy, forced
from router.policy_file import load_policy, policy_from_file
from router.reasons import Reason
from router.signals import TokenSignals, aggregate, hold_back_window, is_forced, signals_from_rows
from runtime.constraints.automaton import NotInLanguage
from runtime.contract import Backend, Event, Finish, GenerationRequest, TokenLogprob
from runtime.errors import GatewayError, InvalidRequest

FORCE_HEADER = "x-kdgate-force"
FRACTION_WINDOW = 500  # decisions over which the realised teacher fraction is exported

log = logging.getLogger(__name__)


class Routed(NamedTuple):
    decision: RouteDecision
    backend: Backend
    events: AsyncIterator[Event]  # what the client receives, held-back events first
    discarded: tuple[TokenLogprob, ...] = ()  # student tokens generated, then not sent (an escalation)


class SingleBackend:
    """`kdgate engine`: one backend, nothing to decide, except which runtime-loaded LoRA adapter a request names."""

    def __init__(self, backend: Backend):
        self.backends = {backend.info.name: backend}
        self.adapters: dict[str, Backend] = {}  # lora_name -> its backend (gateway.engine_lora)
        self._decision = RouteDecision(backend.info.name, backend.info.name)  # type: ignore[arg-type]

    def served(self, decision: RouteDecision) -> None:
        """Nothing to count: one backend serves everything."""

    async def start(self, generation: GenerationRequest, request: RouteRequest, forced_route: str | None) -> Routed:
        backend = self.adapters.get(request.model) or next(iter(self.backends.values()))
        return Routed(self._decision, backend, backend.generate(generation))


class Router:
    def __init__(self, policy: RoutingPolicy, backends: dict[str, Backend], metrics: GatewayMetrics | None = None,
                 handoff: HandoffRule | None = None, deadlines: dict[str, float | None] | None = None,
                 caps: dict[str, int | None] | None = None, breakers: dict[str, CircuitBreaker] | None = None,
                 teacher_target: float | None = None, stalls: dict[str, float | None] | None = None):
        missing = set(policy.requires) - set(backends)
        if missing:
            raise ValueError(f"routing policy `{policy.name}` needs the {', '.join(sorted(missing))} backend; "
                             "configure it or choose another policy")
        if handoff is not None and "teacher" not in backends:
            raise ValueError("handoff needs a teacher backend to hand off to; configure one or disable handoff")
        self.policy = policy
        self.backends = backends
        self.handoff = handoff
        self.metrics = metrics
        self.deadlines = deadlines or {}  # role -> first-token deadline in seconds
        self.stalls = stalls or {}  # role -> longest silence after the first token, in seconds
        self.slots = {role: asyncio.Semaphore(cap) for role, cap in (caps or {}).items() if cap}  # in-flight caps
        self.breakers = breakers or {}
        self.share = TeacherShare()  # shared by every bound copy: one realised-fraction gauge per process
        target = getattr(policy, "target_teacher_fraction", None)
        target = target if target is not None else teacher_target  # a calibrated policy's own, else handoff's
        if metrics is not None and target is not None:
            metrics.teacher_fraction_target.set(target)

    def served(self, decision: RouteDecision) -> None:
        _served(self, decision)

    def bound(self, student: Backend, policy: RoutingPolicy, breaker: CircuitBreaker | None = None,
              handoff_min_prob: float | None = None) -> Router:
        """This router for one request served by `student` under the policy calibrated for it, its own circuit
        breaker and, when handoff is on, its own handoff floor (a student version brings them); the rest (teacher,
        deadlines, slots, metrics) is shared."""
        routed = copy.copy(self)
        routed.backends = {**self.backends, "student": student}
        routed.policy = policy
        if breaker is not None:
            routed.breakers = {**self.breakers, "student": breaker}
        if self.handoff is not None and handoff_min_prob is not None:
            routed.handoff = HandoffRule(handoff_min_prob)
        return routed

    def decide(self, request: RouteRequest, forced_route: str | None) -> RouteDecision | None:
        """The decision made before generation; None when the policy must see the student's first tokens."""
        if forced_route is not None:
            if forced_route not in self.backends:
                raise InvalidRequest(f"cannot force `{forced_route}`: no such backend is configured",
                                     parameter=FORCE_HEADER)
            return forced(forced_route)
        if self.policy.hold_back is not None:
            return None
        return self.policy.decide(request)

    async def start(self, generation: GenerationRequest, request: RouteRequest, forced_route: str | None) -> Routed:
        decision = self.decide(request, forced_route)
        # a forced route is served as asked, whole; an answer under a client's own grammar too, once started:
        # no grammar of its rest can be derived for the teacher
        watch = self.handoff is not None and forced_route is None and (
            generation.constraint is None or generation.constraint.derivable)
        if decision is None:
            routed = await self._hold_back(self.policy.hold_back, generation, request)
        else:
            self._count(decision)
            rescued = decision.route == "student" and forced_route is None and "teacher" in self.backends
            # the student's tokens counted (logprobs), for a handoff and for a rescue of an answer failing mid-way
            watched = with_logprobs(generation, 0) if (watch or rescued) and decision.route == "student" \
                else generation
            events = self.open(decision.route, watched)
            if rescued:
                events = student_or_teacher(events, self.backends["teacher"],
                                            lambda: self.open("teacher", generation),
                                            lambda text, tokens: self._continued(generation, text, tokens))
            routed = Routed(decision, self.backends[decision.route], events)
        if watch and routed.decision.route == "student":
            events = with_handoff(routed.events, generation, self.backends["student"], self.backends["teacher"],
                                  lambda continued: self.open("teacher", continued), self.handoff)
            routed = routed._replace(events=events)
        return routed

    def _continued(self, generation: GenerationRequest, text: str, tokens: int) -> AsyncIterator[Event] | None:
        """The teacher's continuation of a student answer that failed mid-way; None when the sent text cannot be
        continued validly (it breaks the answer's constraint, or the constraint is a client's own grammar)."""
        if generation.constraint is not None and not generation.constraint.derivable and text:
            return None
        try:
            return self.open("teacher", continuation(generation, text, tokens))
        except NotInLanguage:
            return None

    def open(self, role: str, generation: GenerationRequest) -> AsyncIterator[Event]:
        """The backend's stream: refused at once while its circuit is open, then held to its first-token deadline
        once one of its in-flight slots is free."""
        deadline = self.deadlines.get(role)

        def start() -> AsyncIterator[Event]:
            return with_deadline(self.backends[role].generate(generation), deadline, role, self.stalls.get(role))

        slots, breaker = self.slots.get(role), self.breakers.get(role)
        opened = start if slots is None else (lambda: capped(slots, deadline, role, start))
        return opened() if breaker is None else guarded(breaker, opened)

    async def _hold_back(self, hold: HoldBack, generation: GenerationRequest, request: RouteRequest) -> Routed:
        student, started = self.backends["student"], time.monotonic()
        events = self.open("student", with_logprobs(generation, hold.top_logprobs))
        held: list[Event] = []
        logprobs: list[TokenLogprob] = []
        chosen = 0  # tokens that had an alternative: a grammar's forced tokens tell nothing (router.signals)
        try:
            async for event in events:
                held.append(event)
                if isinstance(event, Finish):
                    break
                logprobs.extend(event.logprobs)
                chosen += sum(not is_forced([top.logprob for top in entry.top_logprobs]) for entry in event.logprobs)
                if hold.tokens is not None and chosen >= hold.tokens:
                    break
        except GatewayError as error:  # the student failed before the client saw anything
            await events.aclose()
            if is_client_error(error):
                raise
            log.warning("student failed during hold-back (%s); escalating to the teacher", error)
            decision = RouteDecision("teacher", Reason.STUDENT_ERROR)
            self._count(decision, held_for=time.monotonic() - started)
            if self.metrics is not None:
                self.metrics.count_fallback(decision.reason, "student", error)
            return Routed(decision, self.backends["teacher"], self.open("teacher", generation))
        except BaseException:
            await events.aclose()
            raise
        window = aggregate(hold_back_window(signals_of(logprobs), hold.tokens))
        decision = self.policy.decide(request, window)
        self._count(decision, held_for=time.monotonic() - started)
        if decision.route == "student":
            kept = _replay(held, events)
            if "teacher" in self.backends:  # a student failing after the hold-back is rescued, as any kept answer
                kept = student_or_teacher(kept, self.backends["teacher"], lambda: self.open("teacher", generation),
                                          lambda text, tokens: self._continued(generation, text, tokens))
            return Routed(decision, student, kept)

        def count_discarded() -> None:  # once the teacher answers (if it cannot, these tokens are served)
            if self.metrics is not None:
                self.metrics.discarded_tokens.inc(len(logprobs))

        teacher_events = teacher_or_student(self.open("teacher", generation), student, held, events,
                                            count_discarded)
        return Routed(decision, self.backends["teacher"], teacher_events, discarded=tuple(logprobs))

    def _count(self, decision: RouteDecision, held_for: float | None = None) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.decisions.labels(decision.route, decision.reason).inc()
        if held_for is not None:
            metrics.hold_back.observe(held_for)
        if decision.score is not None:
            metrics.confidence.observe(decision.score)
        threshold = getattr(self.policy, "threshold", None)
        if threshold is not None:
            metrics.threshold.set(threshold)


class TeacherShare:
    """The realised teacher share over the last `FRACTION_WINDOW` routed requests, O(1) per request."""

    def __init__(self):
        self.recent: deque[bool] = deque(maxlen=FRACTION_WINDOW)  # escalated?
        self.teacher = 0  # how many of `recent` are True

    def add(self, escalated: bool) -> None:
        if len(self.recent) == FRACTION_WINDOW:
            self.teacher -= self.recent[0]
        self.recent.append(escalated)
        self.teacher += escalated

    def value(self) -> float:
        return self.teacher / len(self.recent) if self.recent else 0.0

    def restart(self) -> None:
        """A new student: its share is its own."""
        self.recent.clear()
        self.teacher = 0


def _served(router, decision: RouteDecision) -> None:
    """Count one answered request in the teacher-share window by the route that finished it (a handoff counts as
    the teacher's: it needed the teacher); forced requests are not routing's doing and do not count."""
    if decision.reason == Reason.FORCED:
        return
    router.share.add(decision.route == "teacher")
    if router.metrics is not None:
        router.metrics.teacher_fraction.set(router.share.value())


def with_logprobs(generation: GenerationRequest, top_logprobs: int) -> GenerationRequest:
    """The request asking for at least `top_logprobs` alternatives per token (what the client sees is unchanged:
    serving formats logprobs by the client's own request)."""
    wanted = max(generation.sampling.top_logprobs or 0, top_logprobs)
    return replace(generation, sampling=replace(generation.sampling, top_logprobs=wanted))


def signals_of(logprobs: Sequence[TokenLogprob]) -> TokenSignals:
    """Per-token signals from a backend's logprobs (the sampled token's own logprob when no alternatives came)."""
    rows = [[alternative.logprob for alternative in entry.top_logprobs] or [entry.logprob] for entry in logprobs]
    return signals_from_rows(rows, [entry.logprob for entry in logprobs])


async def _replay(held: list[Event], rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The held-back events in order, then the rest of the stream; closing this closes the backend's stream."""
    try:
        for event in held:
            yield event
        if held and isinstance(held[-1], Finish):
            return
        async for event in rest:
            yield event
    finally:
        await rest.aclose()


def build_policy(settings: RoutingSettings) -> RoutingPolicy:
    if settings.policy == "student_only":
        return FixedRoute("student")
    if settings.policy == "teacher_only":
        return FixedRoute("teacher")
    if settings.policy == "random":
        return RandomRoute(settings.teacher_fraction, seed=settings.seed)
    policy_file = load_policy(settings.policy_file)
    online = settings.online
    if not online.enabled:
        return policy_from_file(policy_file)
    target = online.target_teacher_fraction
    if target is None:
        target = policy_file.calibration.target_teacher_fraction
    return policy_from_file(policy_file, OnlineSettings(target_teacher_fraction=target, window=online.window,
                                                        min_samples=online.min_samples, max_step=online.max_step))
