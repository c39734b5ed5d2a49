"""What speculative decoding would gain with the distilled student as the teacher's draft model, estimated from the
shadow store.

A draft token is accepted when the teacher (greedy) would have written it, so the per-token acceptance rate is the
student's top-1 agreement with the teacher; the shadow worker measures exactly that on every shadowed answer (the
teacher scoring the student's tokens). With acceptance α and k draft tokens per step, one teacher forward pass
yields (1 − α^(k+1)) / (1 − α) tokens on average, and the speed-up over the teacher alone is that divided by
1 + k·c, c being the draft's cost per token relative to the teacher's (Leviathan et al., 2023, i.i.d. acceptance).
The agreement is measured on the student's own answers, where the draft runs on the teacher's: an estimate, best
where the two agree most.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.store.records import ShadowRecord


@dataclass(frozen=True)
class Acceptance:
    rate: float  # token-weighted top-1 agreement
    records: int
    tokens: int


def acceptance(records: list[ShadowRecord]) -> Acceptance:
    scored = [(record.top1_agreement, len(record.teacher_scores or [])) for record in records
              if record.kind == "shadow" and record.top1_agreement is not None and record.teacher_scores]
    tokens = sum(count for _, count in scored)
    if not tokens:
        raise ValueError("no shadowed answers with teacher scores in the store: turn shadow sampling on "
                         "(shadow.sample_rate) and let it run")
    return Acceptance(sum(rate * count for rate, count in scored) / tokens, len(scored), tokens)


def tokens_per_step(rate: float, draft_tokens: int) -> float:
    """Expected tokens per teacher forward pass with `draft_tokens` speculated per step."""
    if rate >= 1.0:
        return draft_tokens + 1.0
    return (1 - rate ** (draft_tokens + 1)) / (1 - rate)


def speedup(rate: float, draft_tokens: int, draft_cost: float) -> float:
    return tokens_per_step(rate, draft_tokens) / (1 + draft_tokens * draft_cost)
