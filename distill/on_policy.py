"""On-policy distillation: the student samples answers to the batch's prompts, and the teacher scores every token.

GKD (Agarwal et al., ICLR 2024) and Thinking Machines' on-policy distillation (2025) train the student on its own
samples, so it learns to recover from the states its own mistakes lead to — what teacher-written answers never
show it. Here the teacher runs online beside the training loop: for each sampled answer token its top-k logprobs
(what the cache holds for the teacher's own answers) become that token's target, and the recipe's sparse KD loss
(`loss.divergence`: reverse KL is GKD's choice, mode-seeking) pulls the student there. The rows come back in the
cache's shape (`distill.rows.Row`), so everything after them — collation, chunked loss, accumulation — is the
off-policy path unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.rows import Row
from runtime.tokenizer_hash import tokenizer_hash


class OnPolicy:
    def __init__(self, teacher_dir: Path, tokenizer, tokenizer_digest: str, top_k: int, temperature: float,
                 max_new_tokens: int, device: torch.device):
        from transformers import AutoModelForCausalLM

        if tokenizer_hash(teacher_dir) != tokenizer_digest:
            raise ValueError(f"loss.on_policy.teacher {teacher_dir} uses another tokenizer than the cache and the "
                             "student; the teacher must score the student's own token ids")
        self.teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        self.teacher.requires_grad_(False).eval().to(device)
        self.tokenizer, self.top_k, self.device = tokenizer, top_k, device
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    @torch.no_grad()
    def rows(self, student, rows: Sequence, seed: Sequence[int], autocast) -> list:
        """`rows` with their answers replaced by the student's samples and the teacher's top-k at each token."""
        prompts = [row.input_ids[:row.answer_start] for row in rows]
        with autocast():
            answers = self._sample(student, prompts, seed)
            topk_ids, topk_logprobs = self._score(prompts, answers)
        return [Row(prompt + answer, len(prompt), ids, logprobs)
                for prompt, answer, ids, logprobs in zip(prompts, answers, topk_ids, topk_logprobs, strict=True)]

    def _sample(self, student, prompts: list[list[int]], seed: Sequence[int]) -> list[list[int]]:
        """Each prompt's sampled answer token ids, up to and including the end-of-turn token."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, T) left-padded
        attention_mask = torch.zeros_like(input_ids)
        for index, prompt in enumerate(prompts):
            input_ids[index, width - len(prompt):] = torch.tensor(prompt)
            attention_mask[index, width - len(prompt):] = 1
        was_training = student.training
        student.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
            output = student.generate(input_ids=input_ids.to(self.device),
                                      attention_mask=attention_mask.to(self.device), do_sample=True,
                                      temperature=self.temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        student.train(was_training)
        answers = []
        for tokens in output[:, width:].tolist():
            answers.append(tokens[:tokens.index(eos) + 1] if eos in tokens else tokens)
        return answers

    def _score(self, prompts: list[list[int]], answers: list[list[int]]):
        return teacher_topk(self.teacher, self.tokenizer.pad_token_id, prompts, answers, self.top_k, self.device)


def teacher_topk(teacher, pad_id: int, prompts: list[list[int]], answers: list[list[int]], top_k: int,
                 device: torch.device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The teacher's top-k ids (A, k) int32 and logprobs (A, k) float16 at each answer token of each row, the
    answer teacher-forced (the student's sample here; the true answer for the study's KD along the truth)."""
    sequences = [prompt + answer for prompt, answer in zip(prompts, answers, strict=True)]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    for index, sequence in enumerate(sequences):
        input_ids[index, :len(sequence)] = torch.tensor(sequence)
        attention_mask[index, :len(sequence)] = 1
    logits = teacher(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (B, T, V)
    ids, logprobs = [], []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        # position t predicts token t+1: the answer's tokens are predicted at len(prompt)-1 … end-2
        at = logits[index, len(prompt) - 1:len(prompt) - 1 + len(answer)].float().log_softmax(-1)  # (A, V)
        top = at.topk(top_k, dim=-1)
        ids.append(top.indices.cpu().numpy().astype(np.int32))
        logprobs.append(top.values.cpu().numpy().astype(np.float16))
    return ids, logprobs
