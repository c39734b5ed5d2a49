"""The demo task as teacher-cache input: its training tickets as prompts, and the answer fields every answer needs."""

from __future__ import annotations

from distill.data.generate import Prompt
from distill.demo import task

DEMO_FIELDS = ("queue", "priority", "reply")  # an answer is a JSON object with these fields


def demo_prompts(count: int, seed: int) -> tuple[str, list[Prompt]]:
    """The first `count` demo training tickets for `seed`, with their ground truth as the reference."""
    prompts = [Prompt(f"demo-{index}", ticket.messages(), ticket.answer_json())
               for index, ticket in enumerate(task.take("train", count, seed=seed))]
    return f"demo:train:{count}:seed{seed}", prompts
