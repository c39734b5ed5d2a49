"""The server's own view: scrape a Prometheus histogram from `/metrics` before and after a run and read the delta.

For the gateway this is `kdgate_time_to_first_token_seconds` (request received → first content token sent), which
excludes the network and the client's own parsing, so it sits a little under the client-side TTFT. Quantiles are
interpolated inside buckets, as PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

TTFT_HISTOGRAM = "kdgate_time_to_first_token_seconds"


def histogram(metrics_url: str, name: str = TTFT_HISTOGRAM) -> dict[float, float] | None:
    """Cumulative bucket counts {upper bound: count} summed over label sets; None when the server has no such
    histogram (e.g. a vLLM server: its TTFT histogram is `vllm:time_to_first_token_seconds`)."""
    try:
        response = httpx.get(metrics_url, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(response.text):
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
