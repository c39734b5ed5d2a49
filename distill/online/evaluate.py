"""What the gate looks at, for the active student and the candidate alike:

- on the **held-out slice** (the newest records, never trained on): KL(teacher ‖ student) per token over the
  teacher's cached top-k with a tail bucket, top-1 agreement with the teacher's tokens (both teacher-forced on the
  teacher's answers), and whole-answer agreement of the student's greedy answer with the teacher's;
- on the fixed **golden set** (`{messages, reference, slice}` per line): exact match overall and per slice, the
  share of valid answers (a JSON object, the demo's answer format), and calibration (top-1 ECE on the references).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.demo.generation import greedy_answers
from distill.evaluate import load, teacher_forced
from distill.losses import IGNORE_INDEX, SparseKD
from distill.online.dataset import Example
from distill.recipe import Row, collate


@dataclass(frozen=True)
class GoldenExample:
    messages: list[dict]
    reference: str
    slice: str


def read_golden(path: Path, limit: int | None = None) -> list[GoldenExample]:
    if not Path(path).is_file():
        raise ValueError(f"the golden set {path} does not exist; write one (`kdgate demo golden` for the demo) or "
                         "point `golden.path` at yours")
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
                examples.append(GoldenExample(raw["messages"], raw["reference"], raw.get("slice", "all")))
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
    answers = greedy_answers(model, tokenizer, conversations, batch_size=batch_size)
    by_slice: dict[str, list[bool]] = defaultdict(list)
    for answer, example in zip(answers, golden, strict=True):
        by_slice[example.slice].append(answer == example.reference)
    calibration = teacher_forced(model, None, tokenizer, conversations, [example.reference for example in golden])
    hits = [answer == example.reference for answer, example in zip(answers, golden, strict=True)]
    return {"exact_match": float(np.mean(hits)),
            "by_slice": {name: float(np.mean(slice_hits)) for name, slice_hits in sorted(by_slice.items())},
            "slice_sizes": {name: len(slice_hits) for name, slice_hits in sorted(by_slice.items())},
            "hits": [int(hit) for hit in hits], "slices": [example.slice for example in golden],
            "valid": float(np.mean([_valid(answer) for answer in answers])), "ece": calibration["ece"]}


@torch.no_grad()
def heldout_figures(model, tokenizer, heldout: list[Example], batch_size: int) -> dict:
    if not heldout:
        return {"examples": 0}
    rows = []
    for example in heldout:
        prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows.append(Row(prompt_ids + example.token_ids.tolist(), len(prompt_ids), example.topk_ids,
                        example.topk_logprobs.astype(np.float32)))
    agree = tokens = 0
    kl = 0.0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        kl += float(SparseKD(1.0).per_token(logits[mask], batch["teacher_ids"][:, 1:][mask],
                                            batch["teacher_logprobs"][:, 1:][mask]).sum())
        agree += int(((logits.argmax(-1) == labels) & mask).sum())
        tokens += int(mask.sum())
    answers = greedy_answers(model, tokenizer, [example.messages for example in heldout], batch_size=batch_size)
    return {"examples": len(heldout), "kl_to_teacher": kl / max(tokens, 1), "token_agreement": agree / max(tokens, 1),
            "answer_agreement": float(np.mean([answer == example.text
                                               for answer, example in zip(answers, heldout, strict=True)]))}


def _valid(answer: str) -> bool:
    try:
        return isinstance(json.loads(answer), dict)
    except json.JSONDecodeError:
        return False
