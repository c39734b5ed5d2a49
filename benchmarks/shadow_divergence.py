"""What the shadow figures look like on the demo models: per-token KL, top-1 agreement and teacher NLL of student
answers the student got right versus wrong, and on normal versus drifted traffic (the alert thresholds' basis).

    .venv/bin/python benchmarks/shadow_divergence.py [--examples 300] [--top-logprobs 5]

Each held-out ticket is answered by the student (greedy, top-k logprobs) and the answer is scored by the teacher
through the same backend `score` call the shadow worker makes; figures come from `gateway.shadow.divergence`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from rich.console import Console
from rich.table import Table

from distill.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR, task
from gateway.settings import BackendSettings
from gateway.shadow.divergence import divergence
from runtime.backends.local import LocalBackend
from runtime.contract import GenerationRequest, SamplingParams, collect


async def measure(ticket: task.Ticket, student, teacher, k: int, gate: asyncio.Semaphore):
    async with gate:
        messages = ticket.messages()
        request = GenerationRequest(f"bench-{id(ticket)}", tuple(messages),
                                    SamplingParams(max_tokens=96, temperature=0.0, top_logprobs=k))
        student_answer = await collect(student.generate(request))
        answer = student_answer.text
        scored = await teacher.score(messages, answer, k)
        return ticket, answer == ticket.answer_json(), divergence(student_answer.logprobs, scored.tokens, answer,
                                                                  None)


async def main(args: argparse.Namespace) -> None:
    student = LocalBackend("student", BackendSettings(model_dir=DEMO_STUDENT_DIR, threads=1).engine_settings())
    teacher = LocalBackend("teacher", BackendSettings(model_dir=DEMO_TEACHER_DIR, threads=1).engine_settings())
    gate = asyncio.Semaphore(16)
    tickets = task.take("val", args.examples, seed=5)
    results = await asyncio.gather(*(measure(ticket, student, teacher, args.top_logprobs, gate)
                                     for ticket in tickets))
    await student.aclose()
    await teacher.aclose()
    slices = {
        "student right": [r for r in results if r[1]],
        "student wrong": [r for r in results if not r[1]],
        "normal traffic (all tickets)": results,
        "drifted traffic (two-order tickets)": [r for r in results if r[0].factors["shape"] != "one_order"],
    }
    table = Table(title=f"shadow figures on {len(results)} held-out demo tickets, top-{args.top_logprobs}")
    for column in ("slice", "answers", "mean KL (nats/token)", "p90 KL", "top-1 agreement", "teacher NLL"):
        table.add_column(column, justify="right")
    for name, rows in slices.items():
        kls = [r[2].mean_kl for r in rows if r[2].aligned]
        table.add_row(name, str(len(rows)), f"{statistics.mean(kls):.4f}",
                      f"{statistics.quantiles(kls, n=10)[-1]:.4f}",
                      f"{statistics.mean(r[2].top1_agreement for r in rows if r[2].aligned):.4f}",
                      f"{statistics.mean(r[2].teacher_nll for r in rows):.4f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--top-logprobs", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
