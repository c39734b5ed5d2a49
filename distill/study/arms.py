"""The study's arms: how each student is trained, as the recipe's loss settings and the cache it reads.

Every arm starts from the same pruned student, takes the same steps on the same prompts (the teacher's kept ones,
in the same order) with the same optimizer; only what it learns from differs:

- `gold`: the ground-truth answers (a cache whose one "alternative" per token is the true token);
- `teacher`: the fine-tuned teacher's greedy answers with its top-k logprobs at each token;
- `truth`: the ground-truth answers with the teacher's top-k teacher-forced along them (truth_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Arm:
    description: str
    cache: str  # gold | teacher | truth
    loss: dict = field(default_factory=dict)  # the recipe's `loss` settings
    online_teacher: bool = False  # the teacher runs beside the loop (on-policy)
    on_policy_from: float = 0.0  # the share of the steps trained on the cache before on-policy batches begin

    def loss_settings(self, teacher_dir: Path, steps: int) -> dict:
        if not self.online_teacher:
            return dict(self.loss)
        return {**self.loss, "on_policy": {**self.loss.get("on_policy", {}), "teacher": str(teacher_dir),
                                           "start_step": int(steps * self.on_policy_from)}}


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
    "kd-truth-t1-a0.5": Arm("KD along the true answers: the teacher's top-20 teacher-forced on the ground truth "
                            "(word-level KD), τ=1, α=0.5 with hard labels on the truth", "truth",
                            {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 0.5}),
    "on-policy": Arm("on-policy after an off-policy start: KD (forward KL) on the teacher's cached answers for the "
                     "first half of the steps, then the student samples and the teacher's top-20 scores every token "
                     "(reverse KL)", "teacher",
                     {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0, "divergence": "forward",
                      "on_policy": {"divergence": "reverse", "max_new_tokens": ON_POLICY_MAX_NEW_TOKENS}},
                     online_teacher=True, on_policy_from=0.5),
    "on-policy-cold": Arm("on-policy from the start: the student samples, the teacher's top-20 scores every token, "
                          "reverse KL", "teacher",
                          {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0,
                           "divergence": "reverse", "on_policy": {"max_new_tokens": ON_POLICY_MAX_NEW_TOKENS}},
                          online_teacher=True),
    "on-policy-mixed": Arm("GKD's mixed λ=0.5 from the start: half the batches the student's own samples scored by "
                           "the teacher's top-20, half the teacher's cached answers; reverse KL", "teacher",
                           {"kind": "kd", "estimator": "topk", "temperature": 1.0, "alpha": 1.0,
                            "divergence": "reverse",
                            "on_policy": {"share": 0.5, "max_new_tokens": ON_POLICY_MAX_NEW_TOKENS}},
                           online_teacher=True),
}

# Only the warm-started on-policy arm runs by default. From the pruned student, which writes no valid answer before
# training (KL 10.5 nats/token to the teacher), on-policy batches from the first step taught nothing of the answers'
# format: after 120 steps the cold arm wrote no valid JSON (seed 0: 0 %), nor did the mixed one (0 %, KL 5.2 against
# forward KD's 0.11). Reverse KL is mode-seeking: its gradient is weighted by the student's own probabilities, which
# are near zero on the teacher's tokens until the student is close; on-policy distillation (GKD, and Thinking
# Machines' recipe) starts from a trained student. `arms=[...,on-policy-cold]` runs the others.
# KD along the truth is opt-in until it has run on the seeds the default arms have: a seed's arms all learn from one
# teacher, so adding an arm to a seed another machine made would train that whole seed again.
DEFAULT_ARMS = [name for name in ARMS if name not in ("on-policy-cold", "on-policy-mixed", "kd-truth-t1-a0.5")]
