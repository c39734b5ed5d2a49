"""The server's own view: scrape `/metrics` before and after a run and read the delta.

TTFT: the gateway's `kdgate_time_to_first_token_seconds` histogram (request received → first content token sent),
which excludes the network and the client's own parsing, so it sits a little under the client-side TTFT. Quantiles
are interpolated inside buckets, as PromQL's `histogram_quantile` does.

Cost: a gateway with priced backends counts dollars (`kdgate_cost_dollars_total{route, backend}`, and
`kdgate_cost_all_teacher_dollars_total`, what the same answers would have cost on the teacher alone); divided by its
own count of answered requests (`kdgate_requests_total{outcome="ok"}`) that is the cost per 1,000 requests the
dashboard shows. Shadow work is charged when the teacher finishes it, after the answers: the counters are read once
they have stopped moving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

TTFT_HISTOGRAM = "kdgate_time_to_first_token_seconds"
COST = "kdgate_cost_dollars"
ALL_TEACHER_COST = "kdgate_cost_all_teacher_dollars"
REQUESTS = "kdgate_requests"
QUIET_S = 3.0  # cost counters unchanged this long after a run: the shadow work is taken to be done


def _families(metrics_url: str):
    try:
        response = httpx.get(metrics_url, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return text_string_to_metric_families(response.text)


def histogram(metrics_url: str, name: str = TTFT_HISTOGRAM) -> dict[float, float] | None:
    """Cumulative bucket counts {upper bound: count} summed over label sets; None when the server has no such
    histogram (e.g. a vLLM server: its TTFT histogram is `vllm:time_to_first_token_seconds`)."""
    families = _families(metrics_url)
    if families is None:
        return None
    buckets: dict[float, float] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets or None


def delta(before: dict[float, float] | None, after: dict[float, float] | None) -> dict | None:
    if after is None:
        return None
    before = before or {}
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return {"count": int(total), "p50": quantile(counts, 0.5), "p90": quantile(counts, 0.9),
            "p99": quantile(counts, 0.99)}


def quantile(cumulative: dict[float, float], q: float) -> float:
    """histogram_quantile: linear inside the bucket that holds rank q·total; the +Inf bucket answers its lower
    bound."""
    bounds = sorted(cumulative)
    rank = q * cumulative[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return bounds[-2] if len(bounds) > 1 else 0.0


@dataclass(frozen=True)
class CostCounters:
    """The gateway's cost counters at one scrape."""

    by_route: dict[str, float] = field(default_factory=dict)  # dollars spent, by the route that finished
    all_teacher: float = 0.0  # dollars the same answers would have cost on the teacher alone
    answered: float = 0.0  # kdgate_requests_total{outcome="ok"}

    @property
    def spent(self) -> float:
        return sum(self.by_route.values())


def cost(metrics_url: str) -> CostCounters | None:
    """The cost counters; None when the server exports none (unpriced backends, not a kdgate gateway, unreachable)."""
    families = _families(metrics_url)
    if families is None:
        return None
    by_route: dict[str, float] = {}
    all_teacher = answered = 0.0
    priced = False
    for family in families:
        for sample in family.samples:
            if sample.name == f"{COST}_total":
                route = sample.labels["route"]
                by_route[route] = by_route.get(route, 0.0) + sample.value
                priced = True
            elif sample.name == f"{ALL_TEACHER_COST}_total":
                all_teacher += sample.value
            elif sample.name == f"{REQUESTS}_total" and sample.labels.get("outcome") == "ok":
                answered += sample.value
    return CostCounters(by_route, all_teacher, answered) if priced else None


def settled_cost(metrics_url: str, wait: float, quiet: float = QUIET_S) -> CostCounters | None:
    """The cost counters once they have not moved for `quiet` seconds (the shadow worker has most likely finished
    the run's work: a teacher slower than that per shadow job would need a longer `quiet`), or as they are after
    `wait` seconds."""
    deadline = time.monotonic() + wait
    last = cost(metrics_url)
    while last is not None and time.monotonic() < deadline:
        time.sleep(quiet)
        now = cost(metrics_url)
        if now is None or now.spent == last.spent:
            return now
        last = now
    return last


def cost_delta(before: CostCounters | None, after: CostCounters | None) -> dict | None:
    """Dollars per 1,000 answered requests between two scrapes: spent (by route) and all-teacher."""
    if after is None:
        return None
    before = before or CostCounters()
    answered = after.answered - before.answered
    if answered <= 0:
        return None
    per_1k = 1000 / answered
    spent = (after.spent - before.spent) * per_1k
    all_teacher = (after.all_teacher - before.all_teacher) * per_1k
    return {"answered": int(answered), "per_1k": spent, "all_teacher_per_1k": all_teacher,
            "by_route_per_1k": {route: (value - before.by_route.get(route, 0.0)) * per_1k
                                for route, value in sorted(after.by_route.items())},
            "saving": 1 - spent / all_teacher if all_teacher > 0 else None}
