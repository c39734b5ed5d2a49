"""How close each model of the study is to the teacher on the held-out tickets (the first TICKETS): teacher-forced
along the teacher's own greedy answers, the top-1 token agreement and KL(teacher‖model) per token over the whole
vocabulary (distill/evaluate.py's `teacher_forced`), and the model's NLL per token of the true answers.

Exact match says whether a whole answer is right; these say whether an arm learnt the teacher's distribution, which
is what KD optimises, on the same tickets for every arm (each recipe's own held-out rows come from its own cache and
seed, so its logged KL does not compare across arms).

    out/evals/teacher-KEY12/teacher-answers.json   the teacher's greedy answers to the test tickets, made once
    out/evals/NAME-closeness.json                  each model's figures (NAME may name a teacher's folder)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

BATCH = 16  # teacher and student logits over a 49,152 vocabulary: about 0.5 GB each at this batch
# The first this many test tickets (about 5,000 answer tokens): on 2 cores the teacher's and a student's forward
# over all 400 took 4.5 minutes a model, a quarter of an arm's training.
TICKETS = 100


class Closeness:
    """Loads the teacher (and writes its test answers) only when some model's figures are still missing."""

    def __init__(self, folder: Path, answers: str, teacher_dir: Path, tickets: list, threads: int | None,
                 log: Callable[[str], None]):
        """`folder`: the study's evals/; `answers`: where in it the teacher's test answers are kept."""
        self.folder, self.answers, self.teacher_dir, self.tickets = folder, answers, teacher_dir, tickets[:TICKETS]
        self.threads, self.log = threads, log
        self._teacher = None
        self._answers: list[str] | None = None

    def of(self, name: str, model_dir: Path | None) -> dict:
        """A student's figures (the pruned student before training, or an arm's run); `model_dir` may be None
        where they are recorded already."""
        path = self.folder / f"{name}-closeness.json"
        if path.is_file():
            return json.loads(path.read_text())
        from distill.evaluate import load, teacher_forced

        teacher, tokenizer, answers = self._teacher_and_answers()
        model, _ = load(model_dir)  # a student: the teacher's tokenizer is its own (pruned from it)
        conversations = [ticket.messages() for ticket in self.tickets]
        on_teacher = teacher_forced(model, teacher, tokenizer, conversations, answers, batch_size=BATCH)
        on_truth = teacher_forced(model, None, tokenizer, conversations,
                                  [ticket.answer_json() for ticket in self.tickets], batch_size=BATCH)
        figures = {"kl_to_teacher": on_teacher["kl_to_teacher"],
                   "token_agreement": on_teacher["top1_agreement"], "truth_nll": on_truth["nll"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=1))
        self.log(f"{name}: KL to the teacher {figures['kl_to_teacher']:.4f} nats/token, token agreement "
                 f"{figures['token_agreement']:.1%} (teacher-forced on its test answers)")
        return figures

    def _teacher_and_answers(self):
        if self._teacher is None:
            import torch

            from distill.demo.generation import greedy_answers
            from distill.evaluate import load

            if self.threads:
                torch.set_num_threads(self.threads)
            self._teacher = load(self.teacher_dir)
            path = self.folder / self.answers
            if path.is_file() and len(json.loads(path.read_text())) == len(self.tickets):
                self._answers = json.loads(path.read_text())
            else:
                self._answers = greedy_answers(*self._teacher, [ticket.messages() for ticket in self.tickets],
                                               batch_size=50, max_new_tokens=128)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(self._answers))
        return (*self._teacher, self._answers)
