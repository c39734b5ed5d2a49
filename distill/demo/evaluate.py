"""Evaluate a model on demo tickets: whole-answer exact match, per-field accuracy, and both split by ticket shape."""

from __future__ import annotations

from collections.abc import Sequence

from distill.demo.generation import greedy_answers
from distill.demo.scoring import Scoreboard
from distill.demo.task import Ticket
from distill.demo.tools import TOOLS, ToolConversation, parse_tool_calls, well_formed


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


def evaluate_tool_model(model, tokenizer, conversations: Sequence[ToolConversation], batch_size: int = 100,
                        progress: str | None = None) -> dict:
    """A tools model on held-out tickets, three ways: the plain request (no tools: the answer JSON at once), the call
    turn (offered TOOLS: is the call well-formed, and is it exactly the ground truth's), and the answer turn (after
    the true tool result: the answer JSON). Each split by ticket shape."""
    tickets = [conversation.ticket for conversation in conversations]
    label = (lambda turn: f"{progress} {turn}") if progress else (lambda turn: None)
    plain = greedy_answers(model, tokenizer, [t.messages() for t in tickets], batch_size=batch_size,
                           progress=label("plain"))
    calls = greedy_answers(model, tokenizer, [c.call_turn()[0] for c in conversations], batch_size=batch_size,
                           progress=label("call"), tools=TOOLS)
    answers = greedy_answers(model, tokenizer, [c.answer_turn()[0] for c in conversations], batch_size=batch_size,
                             progress=label("answer"), tools=TOOLS)
    return {"plain": score_answers(plain, tickets), "call": score_calls(calls, conversations),
            "answer": score_answers(answers, tickets)}


def score_calls(texts: Sequence[str], conversations: Sequence[ToolConversation]) -> dict:
    """Call turns: `well_formed` (hermes calls of a known tool with arguments that fit its parameters) and
    `exact_match` (exactly the one true call: name and parsed arguments equal the ground truth's), by shape."""
    counts: dict[str, list[int]] = {}  # shape -> [n, well formed, exact]
    for text, conversation in zip(texts, conversations, strict=True):
        calls = parse_tool_calls(text)
        row = counts.setdefault(conversation.ticket.factors.get("shape", "all"), [0, 0, 0])
        row[0] += 1
        row[1] += well_formed(calls)
        row[2] += calls == [conversation.call]

    def summary(n: int, formed: int, exact: int) -> dict:
        return {"n": n, "well_formed": formed / max(n, 1), "exact_match": exact / max(n, 1)}

    total = [sum(column) for column in zip(*counts.values(), strict=True)] if counts else [0, 0, 0]
    return {**summary(*total), "by_shape": {shape: summary(*row) for shape, row in sorted(counts.items())}}
