"""Does mid-stream handoff beat prefix-only routing at equal teacher token cost? Measured on held-out records.

For each handoff probability, every record is replayed through the handoff rule on the student's recorded
tokens; where it hands off, the real teacher continues the same assistant message from the kept text (the request
the gateway builds), and the joined answer is judged against the record's reference. Teacher cost is the tokens
the teacher generates. Prefix-only routing escalates whole requests, least confident first, each costing the
teacher's full answer; its accuracy is read off at the same teacher token cost.
"""

from __future__ import annotations

import asyncio

import numpy as np
from tqdm import tqdm

from distill.demo.tools import parse_tool_calls
from gateway.handoff import continuation
from kdgate.routing.collect import answer, greedy, is_right
from router.handoff import HandoffRule, handoff_point
from router.records import RouteRecord
from runtime.contract import Backend

MIN_PROBS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


async def teacher_continuations(teacher: Backend, records: list[RouteRecord], cuts: set[tuple[int, int]],
                                concurrency: int = 32) -> dict[tuple[int, int], tuple[str, int]]:
    """(record index, kept tokens) -> (the teacher's continuation, its generated tokens)."""
    gate = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(cuts), desc="teacher continuations", unit="answer")

    async def one(index: int, cut: int) -> tuple[tuple[int, int], tuple[str, int]]:
        record = records[index]
        request = greedy(f"handoff-{index}-{cut}", record.messages, None, record.structured_outputs, record.tools)
        async with gate:
            result = await answer(teacher, continuation(request, "".join(record.student_tokens[:cut]), cut))
        progress.update()
        return (index, cut), (result.text, result.completion_tokens)

    try:
        return dict(await asyncio.gather(*(one(index, cut) for index, cut in sorted(cuts))))
    finally:
        progress.close()


def prefix_routing_cost_curve(scores: np.ndarray, records: list[RouteRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(teacher tokens, accuracy) after escalating the m least confident requests, m = 0..N."""
    order = np.argsort(scores, kind="stable")
    student = np.array([record.student_correct for record in records], dtype=np.float64)[order]
    teacher = np.array([record.teacher_correct for record in records], dtype=np.float64)[order]
    cost = np.array([record.teacher_completion_tokens for record in records], dtype=np.float64)[order]
    tokens = np.concatenate([[0.0], np.cumsum(cost)])
    accuracy = (student.sum() + np.concatenate([[0.0], np.cumsum(teacher - student)])) / len(records)
    return tokens, accuracy


async def evaluate_handoff(teacher: Backend, records: list[RouteRecord], prefix_scores: dict[str, np.ndarray],
                           min_probs: tuple[float, ...] = MIN_PROBS) -> list[dict]:
    missing = [record.id for record in records if record.messages is None or record.student_tokens is None
               or record.reference is None or record.teacher_completion_tokens is None]
    if missing:
        raise ValueError(f"{len(missing)} records lack messages, tokens, reference or teacher cost (e.g. "
                         f"{missing[0]}); recollect them with `kdgate router collect`")
    cuts = {index: {rule: handoff_point(record.student_sampled, HandoffRule(rule)) for rule in min_probs}
            for index, record in enumerate(records)}
    wanted = {(index, cut) for index, by_rule in cuts.items() for cut in by_rule.values() if cut is not None}
    continued = await teacher_continuations(teacher, records, wanted)
    all_teacher_tokens = sum(record.teacher_completion_tokens for record in records)
    curves = {name: prefix_routing_cost_curve(scores, records) for name, scores in prefix_scores.items()}
    rows = []
    for rule in min_probs:
        correct, tokens, handoffs, malformed = 0, 0, 0, 0
        for index, record in enumerate(records):
            cut = cuts[index][rule]
            if cut is None:
                correct += bool(record.student_correct)
                continue
            text, generated = continued[(index, cut)]
            handoffs += 1
            tokens += generated
            joined = "".join(record.student_tokens[:cut]) + text
            correct += is_right(joined, record.reference, record.tools)
            malformed += bool(record.tools) and "<tool_call>" in joined and parse_tool_calls(joined) is None
        row = {"min_prob": rule, "handoff_share": handoffs / len(records), "handoffs": handoffs,
               "teacher_tokens": tokens, "teacher_token_share": tokens / all_teacher_tokens,
               "accuracy": correct / len(records), "malformed_calls": malformed}
        for name, (cost, accuracy) in curves.items():
            row[f"accuracy {name} at equal teacher tokens"] = float(np.interp(tokens, cost, accuracy))
        rows.append(row)
    return rows


def handoff_table(rows: list[dict], calls: bool = False) -> str:
    """The rows as Markdown; `calls`: the records are tool calls, and the handed-off calls that do not parse are
    counted."""
    names = [key.removeprefix("accuracy ").removesuffix(" at equal teacher tokens") for key in rows[0]
             if key.endswith("at equal teacher tokens")]
    header = ["handoff below p", "handed off", "teacher tokens (share of all-teacher)", "accuracy with handoff",
              *(f"{name} at equal teacher tokens" for name in names), *(["malformed calls"] if calls else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['min_prob']:.2f}", f"{100 * row['handoff_share']:.1f} %",
                 f"{100 * row['teacher_token_share']:.1f} %", f"{100 * row['accuracy']:.1f} %",
                 *(f"{100 * row[f'accuracy {name} at equal teacher tokens']:.1f} %" for name in names),
                 *([f"{row['malformed_calls']} of {row['handoffs']}"] if calls else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
