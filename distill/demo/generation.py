"""Batched greedy answers from a Hugging Face causal LM, for building and scoring the demo models.

This is offline bulk work, so it uses `model.generate` (left padding, KV cache) rather than the serving engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from runtime.chat_template import render


def greedy_answers(model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 64,
                   max_new_tokens: int = 96, progress: str | None = None,
                   tools: Sequence[dict] | None = None,
                   tools_each: Sequence[Sequence[dict] | None] | None = None) -> list[str]:
    """The model's greedy answer to each conversation (offered `tools`, or each its own `tools_each`, when given),
    decoded without special tokens."""
    import torch

    offered = tools_each if tools_each is not None else [tools] * len(conversations)
    prompts = [render(tokenizer, messages, given, add_generation_prompt=True)
               for messages, given in zip(conversations, offered, strict=True)]
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))  # similar lengths pad less
    answers: list[str] = [""] * len(prompts)
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        indices = order[start:start + batch_size]
        encoded = tokenizer([prompts[index] for index in indices], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[:, encoded["input_ids"].shape[1]:].cpu()  # (B, T_new)
        for index, tokens in zip(indices, new_tokens, strict=True):
            answers[index] = tokenizer.decode(tokens, skip_special_tokens=True)
    return answers
