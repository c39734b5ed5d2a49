"""What the load generator sends: prompts from the demo task, a JSONL file or synthetic text, as request bodies.

JSONL lines are `{"messages": [...]}` (chat) or `{"prompt": "..."}` (either endpoint; a chat request wraps it as one
user message). Synthetic prompts are random words with a length drawn uniformly from `--input-words lo:hi`.
Bodies are built with the gateway's request model, so a field the gateway no longer accepts fails here first.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.chat.protocol import ChatCompletionRequest

_WORDS = ("order", "refund", "account", "billing", "login", "error", "delivery", "invoice", "upgrade", "cancel",
          "urgent", "please", "help", "broken", "missing", "charged", "twice", "password", "reset", "shipping")


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]

    @property
    def text(self) -> str:
        return "\n".join(str(message.get("content", "")) for message in self.messages)


def demo_prompts(count: int, seed: int) -> list[Prompt]:
    from distill.demo import task

    return [Prompt(ticket.messages()) for ticket in task.take("test", count, seed=seed)]


def jsonl_prompts(path: Path) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not JSON; each line is {{\"messages\": [...]}} or "
                             "{\"prompt\": \"...\"}") from None
        if isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
            prompts.append(Prompt(item["messages"]))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append(Prompt([{"role": "user", "content": item["prompt"]}]))
        else:
            raise ValueError(f"{path}:{number}: needs a non-empty `messages` list or a `prompt` string")
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def synthetic_prompts(count: int, low: int, high: int, seed: int) -> list[Prompt]:
    if not 1 <= low <= high:
        raise ValueError(f"--input-words {low}:{high}: need 1 ≤ lo ≤ hi")
    rng = random.Random(seed)
    return [Prompt([{"role": "user", "content": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))}])
            for _ in range(count)]


@dataclass(frozen=True)
class BodySettings:
    model: str
    max_tokens: int = 64
    temperature: float = 0.0
    logprobs: int | None = None  # top logprobs per token to ask for; None: none
    ignore_eos: bool = False  # vLLM: always generate max_tokens (fixed output length)
    seed: int | None = None


def body(prompt: Prompt, settings: BodySettings, chat: bool) -> dict:
    """One streamed request body (usage included in the stream)."""
    common = {"model": settings.model, "max_tokens": settings.max_tokens, "temperature": settings.temperature,
              "stream": True, "stream_options": {"include_usage": True}}
    if settings.seed is not None:
        common["seed"] = settings.seed
    if settings.ignore_eos:
        common["ignore_eos"] = True
    if not chat:
        completion = {**common, "prompt": prompt.text}
        if settings.logprobs is not None:
            completion["logprobs"] = settings.logprobs
        return completion
    request = {**common, "messages": prompt.messages}
    if settings.logprobs is not None:
        request |= {"logprobs": True, "top_logprobs": settings.logprobs}
    try:
        return ChatCompletionRequest.model_validate(request).model_dump(mode="json", exclude_defaults=True) | {
            "model": settings.model, "stream": True}
    except ValidationError as error:
        item = error.errors()[0]
        raise ValueError(f"request field `{'.'.join(map(str, item['loc']))}`: {item['msg']}") from None
