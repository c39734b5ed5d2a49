"""Evaluate a model on demo tickets: whole-answer exact match, per-field accuracy, and both split by ticket shape."""

from __future__ import annotations

from collections.abc import Sequence

from distill.demo.generation import greedy_answers
from distill.demo.scoring import Scoreboard
from distill.demo.task import Ticket


def evaluate_model(model, tokenizer, tickets: Sequence[Ticket], batch_size: int = 100,
                   progress: str | None = None) -> dict:
    answers = greedy_answers(model, tokenizer, [t.messages() for t in tickets], batch_size=batch_size,
                             progress=progress)
    return score_answers(answers, tickets)


def score_answers(answers: Sequence[str], tickets: Sequence[Ticket]) -> dict:
    overall = Scoreboard()
    by_shape: dict[str, Scoreboard] = {}
    for answer, ticket in zip(answers, tickets, strict=True):
        overall.add(answer, ticket.answer)
        by_shape.setdefault(ticket.factors.get("shape", "all"), Scoreboard()).add(answer, ticket.answer)
    summary = overall.summary()
    summary["by_shape"] = {shape: board.summary() for shape, board in sorted(by_shape.items())}
    return summary
