"""The routing seam: per request, a forced route (the `x-kdgate-force` header) wins, else the policy decides."""

from __future__ import annotations

from collections.abc import Collection

from gateway.errors import InvalidRequest
from router.policy import RouteDecision, RouteRequest, RoutingPolicy, forced

FORCE_HEADER = "x-kdgate-force"


class Router:
    def __init__(self, policy: RoutingPolicy, routes: Collection[str]):
        missing = set(policy.requires) - set(routes)
        if missing:
            raise ValueError(f"routing policy `{policy.name}` needs the {', '.join(sorted(missing))} backend; "
                             "configure it or choose another policy")
        self.policy = policy
        self.routes = frozenset(routes)

    def decide(self, request: RouteRequest, forced_route: str | None) -> RouteDecision:
        if forced_route is None:
            return self.policy.decide(request)
        if forced_route not in self.routes:
            raise InvalidRequest(f"cannot force `{forced_route}`: no such backend is configured",
                                 parameter=FORCE_HEADER)
        return forced(forced_route)
