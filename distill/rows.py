"""A training row as the recipe sees it: the prompt and answer token ids, and the teacher's top-k at each answer
token; and a batch of them, padded. Off-policy rows come from a teacher cache, on-policy ones from the student's own
samples scored by the online teacher (`distill.on_policy`); and the order batches take them in."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from distill.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Row:
    input_ids: list[int]  # prompt (the student's chat template, with the prompt's tools) + the teacher's answer ids
    answer_start: int
    topk_ids: np.ndarray  # (A, k) the teacher's top-k at each answer token
    topk_logprobs: np.ndarray  # (A, k)


class BatchOrder:
    """The rows each batch takes: shuffled passes over the rows from one generator seeded by `seed`, the batch
    taken from the end of what is left. `skip` batches are drawn and dropped first, so a run resumed at a step
    takes exactly the batches a run that never stopped takes there (a resumed run used to reseed at its step)."""

    def __init__(self, rows: int, size: int, seed: int, skip: int = 0):
        self.rows, self.size = rows, size
        self._rng = random.Random(seed)
        self._left: list[int] = []
        for _ in range(skip):
            self.next()

    def next(self) -> list[int]:
        while len(self._left) < self.size:
            refill = list(range(self.rows))
            self._rng.shuffle(refill)
            self._left.extend(refill)
        return [self._left.pop() for _ in range(self.size)]


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels and teacher top-k sit at the answer tokens' own positions."""
    length = max(len(row.input_ids) for row in rows)
    k = max(row.topk_ids.shape[1] for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)  # (B, T)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    teacher_ids = torch.full((batch, length, k), -1, dtype=torch.long)  # (B, T, k)
    teacher_logprobs = torch.zeros((batch, length, k))  # (B, T, k)
    for index, row in enumerate(rows):
        end, start = len(row.input_ids), row.answer_start
        input_ids[index, :end] = torch.tensor(row.input_ids)
        attention_mask[index, :end] = 1
        labels[index, start:end] = input_ids[index, start:end]
        width = row.topk_ids.shape[1]
        teacher_ids[index, start:end, :width] = torch.from_numpy(row.topk_ids.astype(np.int64))
        teacher_logprobs[index, start:end, :width] = torch.from_numpy(row.topk_logprobs.astype(np.float32))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "teacher_ids": teacher_ids, "teacher_logprobs": teacher_logprobs}
