"""The study's arms: how each student is trained, as the recipe's loss settings and the cache it reads.

Every arm starts from the same pruned student, takes the same steps on the same prompts (the teacher's kept ones,
in the same order) with the same optimizer; only what it learns from differs:

- `gold`: the ground-truth answers (a cache whose one "alternative" per token is the true token);
- `teacher`: the fine-tuned teacher's greedy answers with its top-k logprobs at each token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Arm:
    description: str
    cache: str  # gold | teacher
    loss: dict = field(default_factory=dict)  # the recipe's `loss` settings
    online_teacher: bool = False  # the teacher runs beside the loop (on-policy)

    def loss_settings(self, teacher_dir: Path) -> dict:
        if not self.online_teacher:
            return dict(self.loss)
        return {**self.loss, "on_policy": {**self.loss.get("on_policy", {}), "teacher": str(teacher_dir)}}


# The tickets' answers are 45-54 tokens; an untrained student's samples run to the cap, so the cap is the
# on-policy arm's cost (128 doubled it to ~12 s a step on 2 cores) and anything past the longest answer is waste.
ON_POLICY_MAX_NEW_TOKENS = 64

ARMS: dict[str, Arm] = {
    "sft-gold": Arm("hard-label SFT on the ground truth", "gold", {"kind": "sft"}),
    "sft-teacher": Arm("SFT on the teacher's answers (sequence-level KD)", "teacher", {"kind": "sft"}),
    "kd-t1-a0.5": Arm("KD on the cached top-20, τ=1, α=0.5", "teacher",
                      {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 0.5}),
    "kd-t1-a1": Arm("KD on the cached top-20, τ=1, α=1 (no hard labels)", "teacher",
                    {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0}),
    "kd-t2-a0.5": Arm("KD on the cached top-20, τ=2, α=0.5", "teacher",
                      {"kind": "kd", "estimator": "topk", "temperature": 2.0, "alpha": 0.5}),
    "on-policy-mixed": Arm("GKD's mixed λ=0.5: half the batches the student's own samples scored by the teacher's "
                           "top-20, half the teacher's cached answers; reverse KL", "teacher",
                           {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0,
                            "divergence": "reverse",
                            "on_policy": {"share": 0.5, "max_new_tokens": ON_POLICY_MAX_NEW_TOKENS}},
                           online_teacher=True),
    "on-policy": Arm("on-policy: the student samples, the teacher's top-20 scores every token, reverse KL", "teacher",
                     {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0, "divergence": "reverse",
                      "on_policy": {"max_new_tokens": ON_POLICY_MAX_NEW_TOKENS}},
                     online_teacher=True),
}

# Pure on-policy is not run by default: from the pruned student, which writes no valid answer before training, its
# own samples held nothing of the answers' format to learn, and after 120 steps it still wrote none (seed 0: 0 % valid
# JSON, KL 11.5 nats/token to the teacher on held-out rows; docs/distillation.md). GKD mixes in the teacher's answers
# for such a start, and the mixed arm does. `arms=[...,on-policy]` runs it.
DEFAULT_ARMS = [name for name in ARMS if name != "on-policy"]
