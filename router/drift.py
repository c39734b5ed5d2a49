"""Online recalibration under drift, replayed on recorded traffic through the policy the gateway runs.

Live traffic is drawn from held-out records with some groups over-represented (on the demo: more two-order
tickets than at calibration, so the student is less sure more often and a fixed threshold escalates more than
its target). The same `ConfidencePolicy` decides each request twice over, once with the calibrated threshold
frozen and once with online recalibration on; the report is the teacher fraction each realises after warm-up.
"""

from __future__ import annotations

import random

import numpy as np

from router.confidence import ConfidencePolicy
from router.online import OnlineRecalibration, OnlineSettings
from router.policy import RouteRequest
from router.records import RouteRecord
from router.scorers import Scorer
from router.signals import aggregate, hold_back_window


def drifted_traffic(records: list[RouteRecord], weights: dict[str, float], requests: int, seed: int = 0
                    ) -> list[RouteRecord]:
    """`requests` records drawn with replacement, each group weighted (groups not named weigh 1)."""
    rng = random.Random(seed)
    return rng.choices(records, weights=[weights.get(record.group or "", 1.0) for record in records], k=requests)


def replay(scorer: Scorer, prefix_tokens: int | None, threshold: float, traffic: list[RouteRecord],
           online: OnlineSettings | None, warm_up: int) -> dict:
    policy = ConfidencePolicy(scorer, threshold, prefix_tokens,
                              online=OnlineRecalibration(online) if online is not None else None)
    escalated = []
    for index, record in enumerate(traffic):
        window = aggregate(hold_back_window(record.signals(), prefix_tokens))
        decision = policy.decide(RouteRequest(str(index), 1, 0), window)
        escalated.append(decision.route == "teacher")
    after = np.array(escalated[warm_up:], dtype=np.float64)
    return {"teacher_fraction_after_warm_up": float(after.mean()), "final_threshold": policy.threshold,
            "teacher_fraction_last_500": float(np.mean(escalated[-500:]))}


def drift_report(scorer: Scorer, prefix_tokens: int | None, threshold: float, records: list[RouteRecord],
                 target: float, weights: dict[str, float], requests: int = 1500, warm_up: int = 500) -> dict:
    traffic = drifted_traffic(records, weights, requests)
    frozen = replay(scorer, prefix_tokens, threshold, traffic, None, warm_up)
    online = replay(scorer, prefix_tokens, threshold, traffic, OnlineSettings(target_teacher_fraction=target),
                    warm_up)
    return {"target": target, "weights": weights, "requests": requests, "warm_up": warm_up,
            "calibrated_threshold": threshold, "frozen": frozen, "online": online,
            "online_error_points": 100 * (online["teacher_fraction_after_warm_up"] - target)}
