"""What the answers cost, in dollars, counted from the tokens the gateway measured.

`kdgate_cost_dollars_total{route, backend}` is what was spent: each backend is priced per token
(`student.cost`, `teacher.cost`: a price per million tokens, or a GPU-hour price with the throughput it buys), and a
request is charged for the tokens each backend read and wrote for it. `route` is the route that finished the answer,
as in `kdgate_requests_total`, so that cost ÷ answered requests is the cost per request; `backend` is whose work it
was. `kdgate_cost_all_teacher_dollars_total{route}` is what the same answers would have cost on the teacher alone:
each answer's prompt and completion tokens at the teacher's prices.

| how the answer was served | student charged for | teacher charged for |
|---|---|---|
| the student | prompt + completion | — |
| the teacher (policy, forced, `student_error`) | — | prompt + completion |
| escalated after hold-back (`confidence:low`) | prompt + the held-back tokens, generated and never sent | prompt + completion |
| handed off mid-stream (`handoff`) | prompt + the tokens it sent | prompt and the handed-off text + its continuation |
| the student after all (`teacher_unavailable`) | prompt + completion | — (it failed before any token) |
| shadow work (`route="shadow"`) | — | its own answer, and the scoring pass over prompt + student answer |

Why tokens and not busy time: the all-teacher figure has to price work the teacher never did, which only a price per
token can, and the actual figure must be counted the same way to be comparable with it; a token count is also the
same whatever the number of gateway replicas or the other traffic on a backend, where a share of measured busy time
is not. What it leaves out: idle GPU time (the prices hold at the utilisation they were measured at), work for
requests that failed or were cancelled before their last token, a failed backend's prefill before a fallback, and the
one student token a handoff cuts. The student's prompt after an escalation or a handoff is counted in the teacher's
tokens (the prompt the teacher read, less the handed-off text): a student and a teacher distilled from it share a
tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fallback import RouteChange
from gateway.metrics import GatewayMetrics
from router.reasons import Reason
from runtime.contract import Finish
from runtime.settings import BackendSettings

SHADOW_ROUTE = "shadow"


@dataclass(frozen=True)
class Price:
    """Dollars per token, read and written."""

    prompt: float
    completion: float

    @classmethod
    def per_million(cls, prompt: float, completion: float) -> Price:
        return cls(prompt / 1e6, completion / 1e6)

    def of(self, tokens: tuple[int, int]) -> float:
        prompt_tokens, completion_tokens = tokens
        return prompt_tokens * self.prompt + completion_tokens * self.completion


@dataclass
class Bill:
    """One request's work that its final `Finish` does not show: the student tokens an escalation discarded and the
    student text a handoff passed on. Serving fills it from the routed stream and its route changes."""

    discarded: int = 0  # student tokens generated, then not sent (an escalation after hold-back)
    handed_off: int | None = None  # student tokens the client got before the teacher continued; None: no handoff

    def observe(self, change: RouteChange) -> None:
        if change.decision.reason == Reason.HANDOFF or change.handed_off_tokens:  # a handoff, or a rescue mid-way
            self.handed_off = change.handed_off_tokens
        elif change.decision.route == "student":  # the teacher failed: the student's tokens are the answer after all
            self.discarded, self.handed_off = 0, None


@dataclass(frozen=True)
class Work:
    """Tokens (prompt, completion) each backend processed for one answer, and the answer's own: its original prompt
    and its completion, what the teacher alone would have processed."""

    by_backend: dict[str, tuple[int, int]]
    answer: tuple[int, int]


def work(bill: Bill, route: str, finish: Finish) -> Work:
    """Who did what for an answer that finished on `route` with `finish` (usage as the client got it)."""
    prompt, completion = finish.prompt_tokens, finish.completion_tokens
    if route == "teacher" and bill.handed_off is not None:
        # the teacher read the prompt and the handed-off text, and wrote the rest; the answer counts both parts
        original = max(0, prompt - bill.handed_off)
        return Work({"student": (original, bill.handed_off), "teacher": (prompt, completion - bill.handed_off)},
                    (original, completion))
    by_backend = {route: (prompt, completion)}
    if route == "teacher" and bill.discarded:
        by_backend = {"student": (prompt, bill.discarded)} | by_backend
    return Work(by_backend, (prompt, completion))


class CostMeter:
    """Prices by backend role, and the counters they feed."""

    def __init__(self, prices: dict[str, Price], metrics: GatewayMetrics):
        self.prices = prices
        self.metrics = metrics

    @classmethod
    def of(cls, backends: dict[str, BackendSettings], metrics: GatewayMetrics) -> CostMeter | None:
        """The meter for these backends; None unless every one of them is priced (no cost series at all then)."""
        if not backends or any(config.cost is None for config in backends.values()):
            return None
        return cls({role: Price.per_million(*config.cost.per_million()) for role, config in backends.items()},
                   metrics)

    def charge(self, bill: Bill, route: str, finish: Finish) -> None:
        """Count one finished answer."""
        done = work(bill, route, finish)
        for backend, tokens in done.by_backend.items():
            self.metrics.cost.labels(route, backend).inc(self.prices[backend].of(tokens))
        teacher = self.prices.get("teacher")
        if teacher is not None:
            self.metrics.cost_all_teacher.labels(route).inc(teacher.of(done.answer))

    def charge_shadow(self, prompt_tokens: int, completion_tokens: int, backend: str = "teacher") -> None:
        """Count one call the shadow worker made: to the teacher, or to the student for a drift escalation's whole
        answer (spend only: alone, the teacher needs no shadow)."""
        self.metrics.cost.labels(SHADOW_ROUTE, backend).inc(self.prices[backend].of((prompt_tokens,
                                                                                      completion_tokens)))
