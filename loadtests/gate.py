"""`--slo` and `--fail-if`: small expressions over a run's summary.

    --slo ttft=200ms,tpot=50ms
    --fail-if 'p99_ttft>300ms,error_rate>0.01,request_throughput<5'

A `--fail-if` term is `[STAT_]METRIC OP VALUE`: STAT is one of mean, median, p90, p95, p99, min, max, std (for the
latency metrics ttft, ttfc, tpot, itl, e2e, queue_time), or a plain summary number (error_rate, request_throughput,
output_token_throughput, goodput, slo_attainment, peak_concurrency). Durations take ms or s (bare numbers are
seconds). Any term that holds fails the run (non-zero exit).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from loadtests.stats import METRICS, STATS, Slo

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_PLAIN = ("error_rate", "request_throughput", "output_token_throughput", "total_token_throughput", "goodput",
          "slo_attainment", "peak_concurrency", "failed")
_TERM = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*(ms|s)?\s*$")


def seconds(text: str, name: str) -> float:
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(ms|s)?\s*", text)
    try:
        value = float(match.group(1)) if match else None
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ValueError(f"{name}: {text!r} is not a duration (e.g. 200ms or 0.2s)")
    return value / 1000 if match.group(2) == "ms" else value


def parse_slo(text: str | None) -> Slo:
    if not text:
        return Slo()
    limits = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise ValueError(f"--slo term {part.strip()!r}: use ttft=, tpot= or e2e= with a duration "
                             "(e.g. ttft=200ms,tpot=50ms)")
        limits[key] = seconds(value, f"--slo {key}")
    return Slo(**limits)


@dataclass(frozen=True)
class Condition:
    text: str
    key: str  # "p99_ttft" or "error_rate"
    op: str
    value: float

    def value_in(self, summary: dict) -> float | None:
        if self.key in _PLAIN:
            return summary.get(self.key)
        stat, _, metric = self.key.partition("_")
        distribution = summary.get(metric)
        return None if distribution is None else distribution[stat]

    def holds(self, summary: dict) -> bool:
        """True when the run fails this term; a metric with no value (no successful request) fails it too."""
        actual = self.value_in(summary)
        return actual is None or _OPS[self.op](actual, self.value)


def parse_fail_if(text: str | None) -> list[Condition]:
    if not text:
        return []
    conditions = []
    for part in text.split(","):
        match = _TERM.match(part)
        if not match:
            raise ValueError(f"--fail-if term {part.strip()!r}: write METRIC OP VALUE, e.g. p99_ttft>300ms")
        key, op, number, unit = match.groups()
        stat, _, metric = key.partition("_")
        if key not in _PLAIN and not (stat in STATS and metric in METRICS):
            raise ValueError(f"--fail-if: unknown metric {key!r}; use STAT_METRIC (STAT in {', '.join(STATS)}; "
                             f"METRIC in {', '.join(METRICS)}) or one of {', '.join(_PLAIN)}")
        value = float(number)
        if key not in _PLAIN:
            value = value / 1000 if unit == "ms" else value
        elif unit:
            raise ValueError(f"--fail-if: {key} is not a duration; drop the unit {unit!r}")
        conditions.append(Condition(part.strip(), key, op, value))
    return conditions


def failed(conditions: list[Condition], summary: dict) -> list[str]:
    """The terms that hold, each with the measured value."""
    return [f"{c.text} (measured {_shown(c.value_in(summary))})" for c in conditions if c.holds(summary)]


def _shown(value: float | None) -> str:
    return "nothing: no successful request" if value is None else f"{value:.4g}"
