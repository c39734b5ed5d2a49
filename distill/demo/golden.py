"""The demo's golden set: frozen held-out tickets with their ground truth, by slice, that every candidate student is
judged on (`distill.online.gate`): the usual stream by shape (one order, two orders, renamed) and the launched
products of the drift scenario (`launched`, `distill.demo.drift`). Written once to `artifacts/golden.jsonl` and
committed; a test checks that this code still writes the same file."""

from __future__ import annotations

import json
from pathlib import Path

from distill.demo import drift, task

GOLDEN_SEED = 1  # not the seed of `kdgate demo eval`'s test tickets: a set of its own
GOLDEN_SIZE = 400
LAUNCHED_SIZE = 100


def golden_lines(size: int = GOLDEN_SIZE, seed: int = GOLDEN_SEED) -> list[str]:
    usual = [(ticket, ticket.factors["shape"]) for ticket in task.take("test", size, seed=seed)]
    launched = [(ticket, drift.SHIFTED_SLICE) for ticket in drift.take(drift.launched("test", seed), LAUNCHED_SIZE)]
    return [json.dumps({"messages": ticket.messages(), "reference": ticket.answer_json(), "slice": name})
            for ticket, name in usual + launched]


def write_golden(out: Path, size: int = GOLDEN_SIZE, seed: int = GOLDEN_SEED) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(golden_lines(size, seed)) + "\n")
    return out
