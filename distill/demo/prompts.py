"""The demo task as teacher-cache input: its training tickets as prompts, and the answer fields every answer needs."""

from __future__ import annotations

import json
from pathlib import Path

from distill.data.generate import Prompt
from distill.demo import drift, task

DEMO_FIELDS = ("queue", "priority", "reply")  # an answer is a JSON object with these fields


def demo_prompts(count: int, seed: int) -> tuple[str, list[Prompt]]:
    """The first `count` demo training tickets for `seed`, with their ground truth as the reference."""
    prompts = [Prompt(f"demo-{index}", ticket.messages(), ticket.answer_json())
               for index, ticket in enumerate(task.take("train", count, seed=seed))]
    return f"demo:train:{count}:seed{seed}", prompts


def write_prelaunch_prompts(out: Path, count: int, seed: int) -> Path:
    """The drift scenario's first `count` pre-launch training tickets (none mentions a launched product) as JSONL
    for `kdgate distill generate --prompts`, with their ground truth as the reference."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tickets = drift.take(drift.prelaunch("train", seed), count)
    out.write_text("".join(json.dumps({"id": f"pre-{index}", "messages": ticket.messages(),
                                       "reference": ticket.answer_json()}) + "\n"
                           for index, ticket in enumerate(tickets)))
    return out
