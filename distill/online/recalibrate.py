"""The routing threshold refitted for a new student, on the held-out records.

A confidence policy's threshold is a quantile of *one* student's scores: a re-distilled student is surer of the
traffic it learnt, so the old threshold would send it far fewer requests' worth of teacher traffic than the target
(and the gateway refuses a confidence policy fitted to another student). The candidate answers the held-out
prompts greedily, as it will serve them; its first `prefix_tokens` tokens give the window signals the gateway
computes; the policy's own scorer scores them; the threshold is put at the target teacher share of those scores.
The scorer and everything else in the policy file stay as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.online.dataset import Example, tools_of
from router.calibration import calibrate_threshold, teacher_fraction
from router.policy_file import Calibration, PolicyFile, load_policy, save_policy
from router.signals import WindowSignals, aggregate, token_signals
from runtime.chat_template import render
from runtime.store.records import ShadowRecord


def recalibrate(model_dir: Path, policy_path: Path, heldout: list[Example], out: Path, max_new_tokens: int = 96
                ) -> dict:
    """Write the active policy with its threshold refitted to the candidate at `model_dir`; the figures."""
    from distill.evaluate import load

    policy = load_policy(policy_path)
    if not heldout:
        raise ValueError("no held-out records to recalibrate the routing threshold on")
    model, tokenizer = load(model_dir)
    windows = answer_windows(model, tokenizer, [example.messages for example in heldout], policy.top_logprobs,
                             policy.prefix_tokens, max_new_tokens,
                             tools_each=[tools_of(example.constraint) for example in heldout])
    scores = np.asarray([policy.scorer.score(window) for window in windows], dtype=np.float64)
    scores = scores[~np.isnan(scores)]  # no tokens: always escalated, no evidence for a threshold
    target = policy.calibration.target_teacher_fraction
    threshold = calibrate_threshold(scores, target)
    realised = teacher_fraction(scores, threshold)
    refitted = PolicyFile(prefix_tokens=policy.prefix_tokens, top_logprobs=policy.top_logprobs,
                          scorer=policy.scorer, threshold=threshold,
                          calibration=Calibration(data=f"{len(heldout)} held-out live records, answered by "
                                                       f"{model_dir}", examples=len(scores),
                                                  target_teacher_fraction=target,
                                                  realised_teacher_fraction=realised))
    save_policy(refitted, out)
    previous = teacher_fraction(scores, policy.threshold)
    return {"policy_file": str(out), "threshold_before": policy.threshold, "threshold": threshold,
            "target_teacher_fraction": target, "realised_teacher_fraction": realised,
            "teacher_fraction_with_old_threshold": previous, "examples": int(scores.size)}


@torch.inference_mode()
def answer_windows(model, tokenizer, conversations: list[list[dict]], top_logprobs: int, prefix_tokens: int | None,
                   max_new_tokens: int, batch_size: int = 32,
                   tools_each: list[list[dict] | None] | None = None) -> list[WindowSignals]:
    """The window signals of each greedy answer: the top-k logprobs and the chosen token's at every step, as the
    serving engine reports them, over the first `prefix_tokens` tokens (all of them with None). Each conversation
    is rendered with the tools it offered (`tools_each`), as the student saw it."""
    tokenizer.padding_side = "left"
    offered = tools_each if tools_each is not None else [None] * len(conversations)
    windows: list[WindowSignals] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [render(tokenizer, messages, tools, add_generation_prompt=True)
                   for messages, tools in zip(conversations[start:start + batch_size],
                                              offered[start:start + batch_size], strict=True)]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
        logprobs = torch.log_softmax(torch.stack(output.logits, dim=1).float(), dim=-1)  # (B, T, V)
        chosen = output.sequences[:, encoded["input_ids"].shape[1]:]  # (B, T)
        top = logprobs.topk(top_logprobs, dim=-1).values.cpu()  # (B, T, k)
        sampled = logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).cpu()  # (B, T)
        for row in range(chosen.shape[0]):
            length = _answer_length(chosen[row].tolist(), tokenizer.eos_token_id, tokenizer.pad_token_id)
            stop = length if prefix_tokens is None else min(length, prefix_tokens)
            signals = token_signals(top[row, :stop].numpy(), sampled[row, :stop].numpy())
            windows.append(aggregate(signals))
    return windows


def _answer_length(tokens: list[int], eos: int | None, pad: int | None) -> int:
    """Tokens up to and without the end token (what the gateway sees as text tokens)."""
    for index, token in enumerate(tokens):
        if token in (eos, pad):
            return index
    return len(tokens)


def recalibrate_handoff(model_dir: Path, records: list[ShadowRecord], target: float, max_new_tokens: int = 96
                        ) -> dict:
    """The handoff floor at which `target` of the traffic behind the held-out records hands off: an answer hands
    off at its first token less likely than the floor; the floor is the weighted quantile of the answers' least
    likely tokens, each record weighted by the requests it stands for (every escalation is recorded, only a sample
    of the student's answers: unweighted, the hard requests would count several times over)."""
    from distill.evaluate import load

    if not records:
        raise ValueError("no held-out records to refit the handoff floor on")
    model, tokenizer = load(model_dir)
    windows = answer_windows(model, tokenizer, [record.prompt for record in records], 1, None, max_new_tokens,
                             tools_each=[tools_of(record.constraint) for record in records])
    kept = [(window.min_prob, record.weight()) for window, record in zip(windows, records, strict=True)
            if window.tokens]
    minima, weights = (np.asarray(column, dtype=np.float64) for column in zip(*kept, strict=True))
    floor = float(np.clip(calibrate_threshold(minima, target, weights), 1e-6, 1 - 1e-6))  # ±inf at the extremes
    return {"min_prob": floor, "target_teacher_fraction": target,
            "realised_teacher_fraction": teacher_fraction(minima, floor, weights),
            "unweighted_teacher_fraction": teacher_fraction(minima, floor), "examples": int(minima.size),
            "weights": {"escalation": sum(record.kind == "escalation" for record in records),
                        "shadow": sum(record.kind == "shadow" for record in records)}}
