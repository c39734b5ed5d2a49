"""Per-version figures of the students this process serves, and the canary's verdict against the active version.

Each gateway process counts what its own requests did (requests, errors, escalations to the teacher, TTFT, shadow
KL) per student version since the version started serving here. A canary is judged once it has served
`canary.min_requests` requests: worse than the active version by more than a configured margin on errors, on the
share escalated to the teacher, on p99 TTFT, or (optionally) on shadow KL → roll back; healthy for `canary.clean_window_s`
→ promote. Each replica judges from its own sample; the first verdict that lands in the store wins (the slot's
compare-and-swap), the others find the slot already moved.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gateway.settings import CanarySettings

TTFT_WINDOW = 2048  # the most recent TTFTs a version's p99 is taken over


@dataclass
class VersionFigures:
    since: float = field(default_factory=time.monotonic)
    requests: int = 0
    errors: int = 0
    escalated: int = 0  # served (wholly or in part) by the teacher because this student was unsure or failed
    ttft_sum: float = 0.0
    ttft_count: int = 0
    kl_sum: float = 0.0
    kl_count: int = 0
    recent_ttfts: deque = field(default_factory=lambda: deque(maxlen=TTFT_WINDOW))

    def add_ttft(self, seconds: float) -> None:
        self.ttft_sum += seconds
        self.ttft_count += 1
        self.recent_ttfts.append(seconds)

    def p99_ttft(self) -> float | None:
        return float(np.quantile(np.fromiter(self.recent_ttfts, float), 0.99)) if self.recent_ttfts else None

    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def teacher_share(self) -> float:
        return self.escalated / self.requests if self.requests else 0.0

    def mean_ttft(self) -> float | None:
        return self.ttft_sum / self.ttft_count if self.ttft_count else None

    def mean_kl(self) -> float | None:
        return self.kl_sum / self.kl_count if self.kl_count else None

    def public(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate(), 4),
                "teacher_share": round(self.teacher_share(), 4),
                "mean_ttft_ms": None if self.mean_ttft() is None else round(1000 * self.mean_ttft(), 2),
                "p99_ttft_ms": None if self.p99_ttft() is None else round(1000 * self.p99_ttft(), 2),
                "mean_shadow_kl": None if self.mean_kl() is None else round(self.mean_kl(), 5),
                "shadowed": self.kl_count, "seconds_serving": round(time.monotonic() - self.since, 1)}


@dataclass(frozen=True)
class Verdict:
    action: str  # "wait" | "rollback" | "promote"
    reason: str


def judge(canary: VersionFigures, active: VersionFigures, settings: CanarySettings,
          now: float | None = None) -> Verdict:
    """What the canary's figures say, against the active version's over the same period."""
    if canary.requests < settings.min_requests:
        return Verdict("wait", f"{canary.requests} of {settings.min_requests} requests served")
    if canary.error_rate() > active.error_rate() + settings.max_error_rate_increase:
        return Verdict("rollback", f"error rate {canary.error_rate():.3f} against the active version's "
                                   f"{active.error_rate():.3f} (allowed +{settings.max_error_rate_increase:g})")
    if canary.teacher_share() > active.teacher_share() + settings.max_teacher_share_increase:
        return Verdict("rollback", f"teacher share {canary.teacher_share():.3f} against the active version's "
                                   f"{active.teacher_share():.3f} (allowed +{settings.max_teacher_share_increase:g})")
    slow = _slower(canary, active, settings)
    if slow:
        return Verdict("rollback", slow)
    if settings.max_kl_increase is not None and canary.mean_kl() is not None and active.mean_kl() is not None:
        if canary.mean_kl() > active.mean_kl() + settings.max_kl_increase:
            return Verdict("rollback", f"drift-sample KL {canary.mean_kl():.4f} against the active version's "
                                       f"{active.mean_kl():.4f} (allowed +{settings.max_kl_increase:g})")
    if settings.clean_window_s is not None and (now or time.monotonic()) - canary.since >= settings.clean_window_s:
        return Verdict("promote", f"healthy over {canary.requests} requests and {settings.clean_window_s:g} s")
    return Verdict("wait", "healthy so far")


def judgment(canary: VersionFigures | None, active: VersionFigures | None, settings: CanarySettings) -> dict:
    """The rules the canary is judged by and its verdict now, as `kdgate student status` shows them."""
    served = canary is not None and active is not None
    verdict = judge(canary, active, settings) if served else Verdict("wait", "no request served yet")
    return {"rules": settings.model_dump(), "action": verdict.action, "reason": verdict.reason}


def _slower(canary: VersionFigures, active: VersionFigures, settings: CanarySettings) -> str | None:
    """The canary's p99 TTFT beyond `max_ttft_p99_ratio` × the active version's, both over enough answers."""
    if settings.max_ttft_p99_ratio is None or min(len(canary.recent_ttfts), len(active.recent_ttfts)) \
            < settings.min_requests:
        return None
    mine, theirs = canary.p99_ttft(), active.p99_ttft()
    if mine > theirs * settings.max_ttft_p99_ratio + settings.ttft_slack_s:
        return (f"p99 TTFT {1000 * mine:.0f} ms against the active version's {1000 * theirs:.0f} ms (allowed "
                f"×{settings.max_ttft_p99_ratio:g} + {1000 * settings.ttft_slack_s:.0f} ms)")
    return None
