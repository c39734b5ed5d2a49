"""Aggregate decode throughput of the local engine at 1, 4 and 16 concurrent streams, teacher beside student.

    python benchmarks/engine_throughput.py [--rounds 3] [--concurrency 1 4 16] [--threads 2]

Both demo models load in one process; each round runs every (concurrency, model) cell once, interleaved, so machine
noise hits both models alike. A cell sends `concurrency` held-out tickets at once and waits for all answers
(greedy, each answer ends at its end token); throughput is completion tokens over wall time. Reported: medians over
rounds, and the teacher/student time-per-request ratio at each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distill.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR, task
from runtime.contract import Finish, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine


async def cell(engine: LocalEngine, tickets: list[task.Ticket], tag: str) -> tuple[float, int]:
    """Send all tickets at once; return (wall seconds, completion tokens)."""

    async def one(index: int, ticket: task.Ticket) -> int:
        request = GenerationRequest(f"{tag}-{index}", tuple(ticket.messages()),
                                    SamplingParams(max_tokens=96, temperature=0.0))
        async for event in engine.generate(request):
            if isinstance(event, Finish):
                return event.completion_tokens
        return 0

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(i, t) for i, t in enumerate(tickets)))
    return time.perf_counter() - started, sum(tokens)


async def main(args: argparse.Namespace) -> None:
    engines = {name: LocalEngine(EngineSettings(model_dir=path, threads=args.threads))
               for name, path in (("teacher", args.teacher), ("student", args.student))}
    tickets = task.take("test", max(args.concurrency) * 2, seed=1)
    for engine in engines.values():  # warm-up: first calls pay one-off allocation costs
        await cell(engine, tickets[:4], "warmup")
    results: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for round_index in range(args.rounds):
        for concurrency in args.concurrency:
            for name, engine in engines.items():
                batch = tickets[round_index % 2 * concurrency:][:concurrency]
                results.setdefault((name, concurrency), []).append(
                    await cell(engine, batch, f"{name}-{concurrency}-{round_index}"))
    for engine in engines.values():
        engine.shutdown()
    report(results, args)


def report(results, args) -> None:
    table = Table(title=f"local engine, greedy demo answers, {args.threads or 'default'} torch threads, "
                        f"median of {args.rounds} interleaved rounds")
    for column in ("concurrent streams", "model", "aggregate tok/s", "s per request (wall / streams)",
                   "teacher ÷ student time"):
        table.add_column(column, justify="right")
    for concurrency in args.concurrency:
        per_request = {}
        for name in ("teacher", "student"):
            runs = results[(name, concurrency)]
            throughput = statistics.median(tokens / seconds for seconds, tokens in runs)
            per_request[name] = statistics.median(seconds / concurrency for seconds, _ in runs)
            ratio = "" if name == "teacher" else f"{per_request['teacher'] / per_request['student']:.1f}×"
            table.add_row(str(concurrency), name, f"{throughput:,.0f}", f"{per_request[name]:.3f}", ratio)
    Console().print(table)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEMO_TEACHER_DIR)
    parser.add_argument("--student", type=Path, default=DEMO_STUDENT_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
