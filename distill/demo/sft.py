"""Hard-label supervised fine-tuning for the demo models: cross-entropy on the answer tokens only.

The demo build trains the teacher from scratch on ground truth with this loop (the student is distilled with the
trainer's recipe, `distill/recipe.py`). It is deliberately small: the recipe is the general trainer.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.chat_template import render

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    answer_start: int  # index of the first answer token; loss is taken from here on


def encode_examples(tokenizer, conversations: Sequence[list[dict]], answers: Sequence[str],
                    tools: Sequence[Sequence[dict] | None] | None = None) -> list[EncodedExample]:
    """Prompt (chat template with generation prompt, and each conversation's `tools` when given) + answer + eos,
    as one token sequence per example."""
    tools = tools or [None] * len(conversations)
    prompts = [render(tokenizer, messages, offered, add_generation_prompt=True)
               for messages, offered in zip(conversations, tools, strict=True)]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return [EncodedExample(prompt + answer + [tokenizer.eos_token_id], len(prompt))
            for prompt, answer in zip(prompt_ids, answer_ids, strict=True)]


def collate(examples: Sequence[EncodedExample], pad_token_id: int):
    """Right-padded (B, T) input ids, attention mask and labels with the prompt and padding masked out."""
    import torch

    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.input_ids)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, example.answer_start : len(ids)] = ids[example.answer_start :]
    return input_ids, attention_mask, labels


@dataclass(frozen=True)
class SftSettings:
    steps: int
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    bf16: bool = False  # autocast; 3x slower than fp32 on CPUs without AMX/avx512_bf16, so off by default
    seed: int = 0
    # batches of similar lengths (sorted within windows of 64 batches, the batches shuffled): less padding where
    # lengths differ a lot, as the tools mix's turns do (answer turns are twice as long as the rest)
    group_by_length: bool = False


def cosine_lr(step: int, settings: SftSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_lr_ratio
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(model, examples: Sequence[EncodedExample], settings: SftSettings, pad_token_id: int,
          evaluate: Callable[[int], dict] | None = None, eval_every: int = 0,
          log: Callable[[str], None] = print, progress: str | None = None) -> list[dict]:
    """Train in place; returns the evaluation history (one dict per evaluation, with `step` and `elapsed_s`)."""
    import torch
    from tqdm import tqdm

    rng = random.Random(settings.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate, betas=(0.9, 0.95),
    )
    history: list[dict] = []
    order: list[int] = []
    started = time.monotonic()
    bar = tqdm(range(settings.steps), desc=progress, disable=progress is None, unit="step")
    for step in bar:
        if len(order) < settings.batch_size:
            refill = list(range(len(examples)))
            rng.shuffle(refill)
            if settings.group_by_length:
                order.clear()  # whole batches only, so that each stays one length group
                refill = _grouped_by_length(refill, examples, settings.batch_size, rng)
            order.extend(refill)
        batch = [examples[order.pop()] for _ in range(settings.batch_size)]
        input_ids, attention_mask, labels = collate(batch, pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        last = step + 1 == settings.steps
        if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
            record = {"step": step + 1, "elapsed_s": round(time.monotonic() - started, 1), "loss": loss.item()}
            record.update(evaluate(step + 1))
            history.append(record)
            log(" ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in record.items()))
    return history


def _grouped_by_length(indices: list[int], examples: Sequence[EncodedExample], batch_size: int,
                       rng: random.Random) -> list[int]:
    """`indices` reordered so that each run of `batch_size` (popped from the end) holds examples of similar length."""
    window = batch_size * 64
    batches = []
    for start in range(0, len(indices) - batch_size + 1, window):
        chunk = sorted(indices[start:start + window], key=lambda index: len(examples[index].input_ids))
        batches += [chunk[at:at + batch_size] for at in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return [index for batch in batches for index in batch]
