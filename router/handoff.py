"""Mid-stream handoff: when the student's confidence collapses on a token, the teacher finishes the answer.

The rule is the per-token form of the min-probability signal: a student token whose probability is below
`min_prob` is never sent; the teacher continues the same assistant message from the text sent before it. Tokens
that pass are released as they come, so a handoff costs no TTFT, only the teacher's tokens after the handoff.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class HandoffRule:
    min_prob: float  # a sampled student token less likely than this hands the rest of the answer to the teacher

    def __post_init__(self) -> None:
        if not 0.0 < self.min_prob <= 1.0:
            raise ValueError(f"handoff `min_prob` must be in (0, 1], got {self.min_prob}")

    @cached_property
    def log_min_prob(self) -> float:
        return math.log(self.min_prob)

    def collapses(self, sampled_logprob: float) -> bool:
        """Called per streamed token: a comparison with a logarithm taken once."""
        return sampled_logprob < self.log_min_prob


def handoff_point(sampled_logprobs: Sequence[float], rule: HandoffRule) -> int | None:
    """Index of the first token that hands off (the tokens before it are kept), or None when none does."""
    for index, logprob in enumerate(sampled_logprobs):
        if rule.collapses(logprob):
            return index
    return None
