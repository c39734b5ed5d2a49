"""`kdgate distill eval`: students beside the teacher on held-out demo tickets.

Per model: task accuracy (whole-answer exact match, per field, by ticket shape), whole-answer agreement with the
teacher's greedy answer, teacher-forced on the teacher's answers the top-1 token agreement and the full-vocabulary
KL(teacher‖student) per token, perplexity and top-1 calibration error (ECE, 10 bins) on the reference answers, and
greedy decode tokens/s. With a KD student and its SFT baseline, the share of the SFT→teacher gap KD recovers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.demo.evaluate import score_answers
from distill.demo.generation import greedy_answers
from distill.demo.sft import collate, encode_examples
from distill.demo.task import Ticket
from distill.device import inference_device
from distill.losses import IGNORE_INDEX

ECE_BINS = 10


def load(model_dir: Path):
    """A model in float32, for evaluation, on the GPU where torch sees one (distill/device.py), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(inference_device())
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@torch.no_grad()
def teacher_forced(model, teacher, tokenizer, conversations, answers: Sequence[str], batch_size: int = 64,
                   tools: Sequence[Sequence[dict] | None] | None = None) -> dict[str, float]:
    """Top-1 agreement with `answers` and, given a `teacher`, KL(teacher‖model) per token; plus NLL and ECE (each
    conversation rendered with its `tools`, when given)."""
    agree = total = 0
    nll = kl = 0.0
    confidences, hits = [], []
    examples = encode_examples(tokenizer, conversations, answers, tools)
    for start in range(0, len(examples), batch_size):
        input_ids, attention_mask, labels = (tensor.to(model.device) for tensor in
                                              collate(examples[start:start + batch_size], tokenizer.pad_token_id))
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # (B, T-1, V)
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logprobs = F.log_softmax(logits[mask], dim=-1)  # (N, V)
        gold = targets[mask]
        top = logprobs.max(dim=-1)
        agree += int((top.indices == gold).sum())
        total += int(gold.numel())
        nll -= float(logprobs.gather(-1, gold[:, None]).sum())
        confidences.append(top.values.exp().cpu())
        hits.append((top.indices == gold).cpu())
        if teacher is not None:
            teacher_logits = teacher(input_ids=input_ids.to(teacher.device),
                                     attention_mask=attention_mask.to(teacher.device)).logits[:, :-1].float()
            teacher_logprobs = F.log_softmax(teacher_logits.to(logits.device)[mask], dim=-1)
            kl += float((teacher_logprobs.exp() * (teacher_logprobs - logprobs)).sum())
    confidence, hit = torch.cat(confidences).numpy(), torch.cat(hits).numpy()
    return {"top1_agreement": agree / total, "kl_to_teacher": kl / total if teacher is not None else None,
            "nll": nll / total, "ece": expected_calibration_error(confidence, hit)}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total)


def evaluate(models: dict[str, Path], teacher_dir: Path, tickets: Sequence[Ticket], batch_size: int = 100) -> dict:
    teacher, tokenizer = load(teacher_dir)
    conversations = [ticket.messages() for ticket in tickets]
    references = [ticket.answer_json() for ticket in tickets]
    started = time.perf_counter()
    teacher_answers = greedy_answers(teacher, tokenizer, conversations, batch_size=batch_size, progress="teacher")
    teacher_seconds = time.perf_counter() - started
    results = {}
    for name, directory in {"teacher": teacher_dir, **models}.items():
        model, model_tokenizer = (teacher, tokenizer) if name == "teacher" else load(directory)
        started = time.perf_counter()
        answers = teacher_answers if name == "teacher" else greedy_answers(
            model, model_tokenizer, conversations, batch_size=batch_size, progress=name)
        seconds = teacher_seconds if name == "teacher" else time.perf_counter() - started
        tokens = sum(len(model_tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 for answer in answers)
        scores = score_answers(answers, tickets)
        on_teacher = teacher_forced(model, None if name == "teacher" else teacher, model_tokenizer, conversations,
                                    teacher_answers)
        on_reference = teacher_forced(model, None, model_tokenizer, conversations, references)
        results[name] = {
            "exact_match": scores["exact_match"], "fields": {key: scores[f"{key}_accuracy"]
                                                             for key in ("queue", "priority", "reply")},
            "by_shape": {shape: board["exact_match"] for shape, board in scores["by_shape"].items()},
            "answer_agreement": float(np.mean([a == b for a, b in zip(answers, teacher_answers, strict=True)])),
            "token_agreement": on_teacher["top1_agreement"], "kl_to_teacher": on_teacher["kl_to_teacher"],
            "perplexity": float(np.exp(on_reference["nll"])), "ece": on_reference["ece"],
            "tokens_per_s": tokens / seconds, "model": str(directory)}
    return results


def gap_recovered(results: dict, kd: str, sft: str) -> float | None:
    teacher, low = results["teacher"]["exact_match"], results[sft]["exact_match"]
    return None if teacher <= low else (results[kd]["exact_match"] - low) / (teacher - low)
