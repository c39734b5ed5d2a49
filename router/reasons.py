"""Why a request was served by the backend that served it: one enum that routing produces and that serving,
metrics, the shadow capture and dashboards read (`RouteDecision.reason`). A fixed policy's reason is
`policy:<name>` (`policy_reason`)."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    FORCED = "forced:header"  # the client named the backend (x-kdgate-force)
    CONFIDENCE_HIGH = "confidence:high"  # the held-back student tokens scored at or above the threshold
    CONFIDENCE_LOW = "confidence:low"  # ... below it: the teacher answered instead
    NO_TOKENS = "confidence:no_tokens"  # the student stopped at once: no evidence, the teacher answered
    HANDOFF = "handoff"  # a student token fell below the handoff probability: the teacher finished the answer
    STUDENT_ERROR = "student_error"  # the student failed (or missed its deadline) before answering: the teacher
    TEACHER_UNAVAILABLE = "teacher_unavailable"  # the teacher was needed but failed: the student's own answer


def policy_reason(policy_name: str) -> str:
    return f"policy:{policy_name}"


# Requests the student did not finish: the hard examples the shadow store keeps for re-distillation.
ESCALATIONS = frozenset({Reason.CONFIDENCE_LOW, Reason.NO_TOKENS, Reason.HANDOFF, Reason.STUDENT_ERROR})
# Reasons that mean a backend failed and the other one served.
FALLBACKS = frozenset({Reason.STUDENT_ERROR, Reason.TEACHER_UNAVAILABLE})
