"""What a grammar costs the local engine per generated token: the same greedy demo answers with and without
`structured_outputs`, on the demo student.

    python benchmarks/grammar_overhead.py [--rounds 5] [--concurrency 1 16] [--threads 2]

Each round runs every (concurrency, constraint) cell once, interleaved, so machine noise hits all alike. A cell sends
`concurrency` held-out tickets at once and waits for all answers; the figure is wall time over completion tokens
(answers under the demo schema are the unconstrained ones, token for token, so the work is the same). `free` has no
grammar; `mixed` constrains half the tickets with the schema, to show what the other half pays for sharing its
steps. Reported: medians over rounds, each constraint's extra time per token over `free` (end to end, so machine
noise included), and the grammar's own work per token, timed around it in the engine thread (masking the step's
logits, advancing the matchers, getting each request's matcher): the overhead without the noise. The first
constrained request compiles its grammar; the warm-up round pays that, the rounds measured hit the compiler's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distill.demo import DEMO_STUDENT_DIR, catalog, task
from runtime.contract import Finish, GenerationRequest, SamplingParams
from runtime.engine import engine as engine_module
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.engine.grammar import SequenceGrammar

SCHEMA = {
    "type": "object",
    "properties": {"queue": {"enum": list(catalog.QUEUES)}, "priority": {"enum": list(catalog.PRIORITIES)},
                   "reply": {"type": "string"}},
    "required": ["queue", "priority", "reply"], "additionalProperties": False,
}
CONSTRAINTS = {"free": None, "json schema": {"json": SCHEMA}, "json_object": {"json_object": True},
               "regex": {"regex": r'\{"queue": "[a-z-]+", "priority": "P[1-4]", "reply": "[^"]*"\}'},
               "mixed": "half"}


class GrammarClock:
    """Seconds spent in the engine's grammar calls, wrapped where the engine calls them."""

    def __init__(self):
        self.seconds = 0.0
        engine_module.mask_logits = self._timed(engine_module.mask_logits)
        SequenceGrammar.accept = self._timed(SequenceGrammar.accept)
        LocalEngine.grammar_for = self._timed(LocalEngine.grammar_for)

    def _timed(self, function):
        def timed(*args, **kwargs):
            started = time.thread_time()  # CPU time of the calling thread: waits for the GIL are not grammar work
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - started
        return timed


CLOCK = GrammarClock()


async def cell(engine: LocalEngine, tickets: list[task.Ticket], constraint, tag: str) -> tuple[float, int, float]:
    """Send all tickets at once; return (wall seconds, completion tokens, seconds of grammar work)."""

    async def one(index: int, ticket: task.Ticket) -> int:
        grammar = ({"json": SCHEMA} if index % 2 else None) if constraint == "half" else constraint
        request = GenerationRequest(f"{tag}-{index}", tuple(ticket.messages()),
                                    SamplingParams(max_tokens=96, temperature=0.0), structured_outputs=grammar)
        async for event in engine.generate(request):
            if isinstance(event, Finish):
                return event.completion_tokens
        return 0

    started, grammar_before = time.perf_counter(), CLOCK.seconds
    tokens = await asyncio.gather(*(one(i, t) for i, t in enumerate(tickets)))
    return time.perf_counter() - started, sum(tokens), CLOCK.seconds - grammar_before


async def main(args: argparse.Namespace) -> None:
    engine = LocalEngine(EngineSettings(model_dir=args.student, threads=args.threads))
    tickets = task.take("test", max(args.concurrency) * 2, seed=1)
    for name, constraint in CONSTRAINTS.items():  # warm-up: allocation, and each grammar's one compilation
        await cell(engine, tickets[:4], constraint, f"warmup-{name}")
    results: dict[tuple[str, int], list[tuple[float, int, float]]] = {}
    for round_index in range(args.rounds):
        for concurrency in args.concurrency:
            batch = tickets[round_index % 2 * concurrency:][:concurrency]
            for name, constraint in CONSTRAINTS.items():
                if name == "mixed" and concurrency == 1:
                    continue
                results.setdefault((name, concurrency), []).append(
                    await cell(engine, batch, constraint, f"{name}-{concurrency}-{round_index}"))
    engine.shutdown()
    report(results, args)


def report(results, args) -> None:
    table = Table(title=f"local engine, demo student, greedy, {args.threads or 'default'} torch threads, median of "
                        f"{args.rounds} interleaved rounds")
    for column in ("concurrent streams", "constraint", "tokens per answer", "µs per token", "over free",
                   "grammar work, µs per token"):
        table.add_column(column, justify="right")
    for concurrency in args.concurrency:
        free = statistics.median(seconds / tokens for seconds, tokens, _ in results[("free", concurrency)])
        for name in CONSTRAINTS:
            if name == "mixed" and concurrency == 1:  # half of one ticket: none constrained, `free` again
                continue
            runs = results[(name, concurrency)]
            per_token = statistics.median(seconds / tokens for seconds, tokens, _ in runs)
            length = statistics.median(tokens / concurrency for _, tokens, _ in runs)
            grammar = statistics.median(grammar / tokens for _, tokens, grammar in runs)
            extra = "" if name == "free" else f"{(per_token - free) * 1e6:+,.0f} µs ({per_token / free - 1:+.0%})"
            table.add_row(str(concurrency), name, f"{length:.0f}", f"{per_token * 1e6:,.0f}", extra,
                          f"{grammar * 1e6:,.1f}")
    Console().print(table)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=DEMO_STUDENT_DIR)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
