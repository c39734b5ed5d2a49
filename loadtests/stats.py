"""Summaries of a run's records, overall and per route: latency distributions, throughput, goodput, failures.

Everything here is recomputable from the per-request records in the JSON report (`summarize(records, elapsed)`).
Warm-up requests are excluded. Latency statistics use successful requests only; the error rate uses all.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from loadtests.client import RequestRecord

STATS = ("mean", "median", "p90", "p95", "p99", "min", "max", "std")
METRICS = ("ttft", "ttfc", "tpot", "itl", "e2e", "queue_time")


@dataclass(frozen=True)
class Slo:
    """Per-request service-level objectives in seconds; a request meets the SLO when it meets all that are set."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def met(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        for name in ("ttft", "tpot", "e2e"):
            limit, value = getattr(self, name), getattr(record, name)
            if limit is not None and (value is None or value > limit):
                return False
        return True

    @property
    def active(self) -> bool:
        return any(value is not None for value in (self.ttft, self.tpot, self.e2e))


def distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "median": float(np.median(array)),
            "p90": float(np.percentile(array, 90)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "min": float(array.min()), "max": float(array.max()),
            "std": float(array.std()), "count": int(array.size)}


def summarize(records: list[RequestRecord], elapsed: float, slo: Slo = Slo(), peak_concurrency: int = 0) -> dict:
    measured = [r for r in records if not r.warmup]
    summary = _group(measured, elapsed, slo)
    summary["peak_concurrency"] = peak_concurrency
    by_route: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in measured:
        by_route[record.route or "unknown"].append(record)
    summary["routes"] = {route: _group(group, elapsed, slo) for route, group in sorted(by_route.items())}
    total = len(measured)
    summary["route_mix"] = {route: len(group) / total for route, group in sorted(by_route.items())} if total else {}
    versions = student_versions(measured)
    if versions is not None:
        summary["student_versions"] = versions
    return summary


def student_versions(records: list[RequestRecord]) -> dict | None:
    """Requests per student version, and whether each (prompt, version) always got one answer: at temperature 0
    a version answers a prompt one way, so a second answer means a stream mixed two versions (or sampling)."""
    served = [r for r in records if r.ok and r.student_version is not None]
    if not served:
        return None
    answers: dict[tuple[int | None, str], set[str]] = defaultdict(set)
    for record in served:
        answers[(record.prompt, record.student_version)].add(record.answer_sha)
    by_prompt: dict[int | None, list[frozenset[str]]] = defaultdict(list)
    for (prompt, _), hashes in answers.items():
        by_prompt[prompt].append(frozenset(hashes))
    several = [hashes for hashes in by_prompt.values() if len(hashes) > 1]
    return {"requests": dict(sorted(Counter(r.student_version for r in served).items())),
            "prompt_version_pairs": len(answers),
            "pairs_with_several_answers": sum(len(hashes) > 1 for hashes in answers.values()),
            "prompts_served_by_several_versions": len(several),
            "of_which_answered_differently": sum(len(set(hashes)) > 1 for hashes in several)}


def _group(records: list[RequestRecord], elapsed: float, slo: Slo) -> dict:
    ok = [r for r in records if r.ok]
    summary: dict = {"requests": len(records), "succeeded": len(ok), "failed": len(records) - len(ok),
                     "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0}
    for metric in METRICS:
        if metric == "itl":
            values = [gap for r in ok for gap in r.itl]
        else:
            values = [value for r in ok if (value := getattr(r, metric)) is not None]
        summary[metric] = distribution(values)
    output = sum(r.output_tokens or 0 for r in ok)
    prompt = sum(r.input_tokens or 0 for r in ok)
    summary |= {"request_throughput": len(ok) / elapsed, "output_token_throughput": output / elapsed,
                "total_token_throughput": (output + prompt) / elapsed, "output_tokens": output, "input_tokens": prompt,
                "usage_from_server": all(r.usage_from_server for r in ok) if ok else None}
    if slo.active:
        good = sum(slo.met(r) for r in records)
        summary |= {"goodput": good / elapsed, "slo_attainment": good / len(records) if records else 0.0}
    reasons = Counter(_reason(r.error) for r in records if not r.ok)
    summary["failures"] = {reason: {"count": count, "samples": [r.error for r in records if not r.ok and
                                                               _reason(r.error) == reason][:3]}
                           for reason, count in reasons.most_common()}
    return summary


def _reason(error: str | None) -> str:
    """A failure's class: the text before its first colon (`HTTP 503`, `malformed chunk`, `timed out after 60 s`)."""
    return (error or "").split(":")[0]
