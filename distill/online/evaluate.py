"""What the gate looks at, for the active student and the candidate alike:

- on the **held-out slice** (the newest records, never trained on): KL(teacher ‖ student) per token over the
  teacher's cached top-k with a tail bucket, top-1 agreement with the teacher's tokens (both teacher-forced on the
  teacher's answers), and whole-answer agreement of the student's greedy answer with the teacher's;
- on the fixed **golden set** (`{messages, reference, slice}` per line, and `tools` where the conversation offers
  some): exact match overall and per slice (a reference that is tool calls matches the same calls, names and
  arguments as JSON, as `kdgate router eval --tools` judges them), the share of valid answers (a JSON object, the
  demo's answer format; well-formed calls where the reference is calls), and calibration (top-1 ECE on the
  references).

Every prompt is rendered with the tools its conversation offered (a held-out record's come with its constraint),
as the student saw it when it answered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.demo.generation import greedy_answers
from distill.demo.tools import parse_tool_calls
from distill.evaluate import load, teacher_forced
from distill.losses import IGNORE_INDEX, SparseKD
from distill.online.dataset import Example, tools_of
from distill.recipe import Row, collate
from runtime.chat_template import render


@dataclass(frozen=True)
class GoldenExample:
    messages: list[dict]
    reference: str
    slice: str
    tools: list[dict] | None = None  # offered to the model (chat's shape); the reference may then be calls


def read_golden(path: Path, limit: int | None = None) -> list[GoldenExample]:
    if not Path(path).is_file():
        raise ValueError(f"the golden set {path} does not exist; write one (`kdgate demo golden` for the demo) or "
                         "point `golden.path` at yours")
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
                examples.append(GoldenExample(raw["messages"], raw["reference"], raw.get("slice", "all"),
                                              raw.get("tools")))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a golden example ({error!r}); each line is "
                                 "{\"messages\": [...], \"reference\": \"...\", \"slice\": \"...\"}") from None
    if limit and limit < len(examples):  # an even sample across the file, so every slice keeps its share
        step = len(examples) / limit
        return [examples[int(index * step)] for index in range(limit)]
    return examples


def figures(model_dir: Path, golden: list[GoldenExample], heldout: list[Example], batch_size: int = 64) -> dict:
    model, tokenizer = load(model_dir)
    return {"golden": golden_figures(model, tokenizer, golden, batch_size),
            "heldout": heldout_figures(model, tokenizer, heldout, batch_size)}


def golden_figures(model, tokenizer, golden: list[GoldenExample], batch_size: int) -> dict:
    conversations = [example.messages for example in golden]
    tools = [example.tools for example in golden]
    answers = greedy_answers(model, tokenizer, conversations, batch_size=batch_size, tools_each=tools)
    hits = [matches(answer, example.reference) for answer, example in zip(answers, golden, strict=True)]
    by_slice: dict[str, list[bool]] = defaultdict(list)
    for hit, example in zip(hits, golden, strict=True):
        by_slice[example.slice].append(hit)
    calibration = teacher_forced(model, None, tokenizer, conversations, [example.reference for example in golden],
                                 tools=tools)
    return {"exact_match": float(np.mean(hits)),
            "by_slice": {name: float(np.mean(slice_hits)) for name, slice_hits in sorted(by_slice.items())},
            "slice_sizes": {name: len(slice_hits) for name, slice_hits in sorted(by_slice.items())},
            "hits": [int(hit) for hit in hits], "slices": [example.slice for example in golden],
            "valid": float(np.mean([_valid(answer, example.reference)
                                    for answer, example in zip(answers, golden, strict=True)])),
            "ece": calibration["ece"]}


def matches(answer: str, reference: str) -> bool:
    """Exact match; where the reference is tool calls, the same calls (names, and arguments as JSON: however a
    model spaces or orders the keys, a client's parser reads the same call)."""
    calls = parse_tool_calls(reference)
    return answer == reference if calls is None else parse_tool_calls(answer) == calls


@torch.no_grad()
def heldout_figures(model, tokenizer, heldout: list[Example], batch_size: int) -> dict:
    if not heldout:
        return {"examples": 0}
    rows = []
    for example in heldout:
        prompt = render(tokenizer, example.messages, tools_of(example.constraint), add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows.append(Row(prompt_ids + example.token_ids.tolist(), len(prompt_ids), example.topk_ids,
                        example.topk_logprobs.astype(np.float32)))
    agree = tokens = 0
    kl = 0.0
    for start in range(0, len(rows), batch_size):
        batch = {name: tensor.to(model.device)
                 for name, tensor in collate(rows[start:start + batch_size], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        kl += float(SparseKD(1.0).per_token(logits[mask], batch["teacher_ids"][:, 1:][mask],
                                            batch["teacher_logprobs"][:, 1:][mask]).sum())
        agree += int(((logits.argmax(-1) == labels) & mask).sum())
        tokens += int(mask.sum())
    answers = greedy_answers(model, tokenizer, [example.messages for example in heldout], batch_size=batch_size,
                             tools_each=[tools_of(example.constraint) for example in heldout])
    return {"examples": len(heldout), "kl_to_teacher": kl / max(tokens, 1), "token_agreement": agree / max(tokens, 1),
            "answer_agreement": float(np.mean([matches(answer, example.text)
                                               for answer, example in zip(answers, heldout, strict=True)]))}


def _valid(answer: str, reference: str) -> bool:
    if parse_tool_calls(reference) is not None:
        return parse_tool_calls(answer) is not None
    try:
        return isinstance(json.loads(answer), dict)
    except json.JSONDecodeError:
        return False
