"""The confidence policy: serve the student when its first tokens are sure, escalate to the teacher when not.

The gateway holds back the student's first `prefix_tokens` tokens (all of them with `prefix_tokens=None`, the
FrugalGPT-style cascade that judges the whole answer), computes their window signals, and asks `decide`: a score
below the threshold escalates. A window without tokens (the student stopped at once) has no evidence and
escalates. With online recalibration the threshold follows live traffic (see `router.online`).
"""

from __future__ import annotations

import math

from router.online import OnlineRecalibration
from router.policy import ROUTES, HoldBack, Route, RouteDecision, RouteRequest
from router.reasons import Reason
from router.scorers import Scorer
from router.signals import WindowSignals


class ConfidencePolicy:
    name = "confidence"
    requires = frozenset(ROUTES)

    def __init__(self, scorer: Scorer, threshold: float, prefix_tokens: int | None, top_logprobs: int = 5,
                 online: OnlineRecalibration | None = None, target_teacher_fraction: float | None = None):
        if math.isnan(threshold):
            raise ValueError("the confidence threshold is NaN; recalibrate the policy")
        self.scorer = scorer
        self.threshold = threshold
        self.hold_back = HoldBack(tokens=prefix_tokens, top_logprobs=top_logprobs)
        self.online = online
        self.target_teacher_fraction = online.settings.target_teacher_fraction if online else target_teacher_fraction

    def decide(self, request: RouteRequest, evidence: WindowSignals | None = None) -> RouteDecision:
        if evidence is None:
            raise ValueError("the confidence policy decides on the student's first tokens; pass their signals")
        score = self.scorer.score(evidence)
        threshold = self.threshold
        route: Route
        if math.isnan(score):
            route, reason = "teacher", Reason.NO_TOKENS
        elif score < threshold:
            route, reason = "teacher", Reason.CONFIDENCE_LOW
        else:
            route, reason = "student", Reason.CONFIDENCE_HIGH
        if self.online is not None:
            self.threshold = self.online.observe(score, route == "teacher", threshold)
        return RouteDecision(route=route, reason=reason, score=None if math.isnan(score) else score,
                             threshold=threshold)
