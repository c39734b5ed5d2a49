"""Routing policies: per request, which backend serves it.

`RoutingPolicy.decide(request, evidence) -> RouteDecision` is the seam the gateway calls. A policy that decides
before any token exists (`student_only`, `teacher_only`, `random`) has `hold_back = None` and ignores `evidence`.
A policy that needs to see the student first (`router.confidence.ConfidencePolicy`) names a `HoldBack`: the gateway
starts the student, holds its first N tokens back from the client, and calls `decide` with their window signals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

from router.reasons import Reason, policy_reason
from router.signals import WindowSignals

Route = Literal["student", "teacher"]
ROUTES: tuple[Route, ...] = ("student", "teacher")


@dataclass(frozen=True)
class RouteRequest:
    """What a policy may look at before any token is generated."""

    request_id: str
    message_count: int
    prompt_chars: int
    model: str | None = None  # the model the client named (an engine server picks a LoRA adapter by it)


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    reason: str  # a `router.reasons.Reason`, or `policy:<name>` for a fixed policy
    score: float | None = None  # the confidence the decision was based on, when there is one
    threshold: float | None = None


@dataclass(frozen=True)
class HoldBack:
    """Start the student and hold its first `tokens` tokens back (None: the whole answer) before deciding."""

    tokens: int | None
    top_logprobs: int  # alternatives per token the signals need from the student

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"a hold-back prefix needs at least one token, got {self.tokens}")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"`top_logprobs` for the signals must be between 1 and 20, got {self.top_logprobs}")


class RoutingPolicy(Protocol):
    name: str
    requires: frozenset[Route]  # the backends the policy may choose
    hold_back: HoldBack | None  # None: decides before generation, `evidence` is always None

    def decide(self, request: RouteRequest, evidence: WindowSignals | None = None) -> RouteDecision: ...


@dataclass(frozen=True)
class FixedRoute:
    """Always the same backend: `student_only` (the default) or `teacher_only`."""

    route: Route = "student"
    hold_back: None = None

    @property
    def name(self) -> str:
        return f"{self.route}_only"

    @property
    def requires(self) -> frozenset[Route]:
        return frozenset({self.route})

    def decide(self, request: RouteRequest, evidence: WindowSignals | None = None) -> RouteDecision:
        return RouteDecision(route=self.route, reason=policy_reason(self.name))


class RandomRoute:
    """Each request goes to the teacher with probability `teacher_fraction`: the baseline every router must beat."""

    name = "random"
    requires: frozenset[Route] = frozenset(ROUTES)
    hold_back = None

    def __init__(self, teacher_fraction: float, seed: int | None = None):
        if not 0.0 <= teacher_fraction <= 1.0:
            raise ValueError(f"`teacher_fraction` must be between 0 and 1, got {teacher_fraction}")
        self.teacher_fraction = teacher_fraction
        self._rng = random.Random(seed)

    def decide(self, request: RouteRequest, evidence: WindowSignals | None = None) -> RouteDecision:
        route: Route = "teacher" if self._rng.random() < self.teacher_fraction else "student"
        return RouteDecision(route=route, reason=policy_reason(self.name), threshold=self.teacher_fraction)


def forced(route: Route) -> RouteDecision:
    """The decision for a request that names its backend (the `x-kdgate-force` header)."""
    return RouteDecision(route=route, reason=Reason.FORCED)
