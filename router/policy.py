"""Routing policies: called once per request, they decide which backend starts serving it.

`RoutingPolicy.decide(request) -> RouteDecision` is the seam the gateway calls. This module holds the fixed
policies; confidence-based policies (which see the student's first tokens) build on the same two types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Route = Literal["student", "teacher"]
ROUTES: tuple[Route, ...] = ("student", "teacher")


@dataclass(frozen=True)
class RouteRequest:
    """What a policy may look at before any token is generated."""

    request_id: str
    message_count: int
    prompt_chars: int


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    reason: str  # a short code: "policy:student_only", "forced:header", ...
    score: float | None = None  # the confidence the decision was based on, when there is one
    threshold: float | None = None


class RoutingPolicy(Protocol):
    name: str
    requires: frozenset[Route]  # the backends the policy may choose

    def decide(self, request: RouteRequest) -> RouteDecision: ...


@dataclass(frozen=True)
class FixedRoute:
    """Always the same backend: `student_only` (the default) or `teacher_only`."""

    route: Route = "student"

    @property
    def name(self) -> str:
        return f"{self.route}_only"

    @property
    def requires(self) -> frozenset[Route]:
        return frozenset({self.route})

    def decide(self, request: RouteRequest) -> RouteDecision:
        return RouteDecision(route=self.route, reason=f"policy:{self.name}")


def forced(route: Route) -> RouteDecision:
    """The decision for a request that names its backend (the `x-kdgate-force` header)."""
    return RouteDecision(route=route, reason="forced:header")


def build_policy(name: str) -> RoutingPolicy:
    policies = {"student_only": FixedRoute("student"), "teacher_only": FixedRoute("teacher")}
    if name not in policies:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(policies)}")
    return policies[name]
