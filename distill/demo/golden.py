"""The demo's golden set: a frozen slice of held-out tickets with their ground truth, by shape, that every candidate
student is judged on (`distill.online.gate`). Written once to `artifacts/golden.jsonl` and committed; a test checks
that this code still writes the same file."""

from __future__ import annotations

import json
from pathlib import Path

from distill.demo import task

GOLDEN_SEED = 1  # not the seed of `kdgate demo eval`'s test tickets: a set of its own
GOLDEN_SIZE = 400


def golden_lines(size: int = GOLDEN_SIZE, seed: int = GOLDEN_SEED) -> list[str]:
    return [json.dumps({"messages": ticket.messages(), "reference": ticket.answer_json(),
                        "slice": ticket.factors["shape"]}) for ticket in task.take("test", size, seed=seed)]


def write_golden(out: Path, size: int = GOLDEN_SIZE, seed: int = GOLDEN_SEED) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(golden_lines(size, seed)) + "\n")
    return out
