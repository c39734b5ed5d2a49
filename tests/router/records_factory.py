"""Synthetic routing records for tests: a student whose wrong answers carry less sure tokens (with noise)."""

from __future__ import annotations

import math
import random

from router.records import RouteRecord


def synthetic_records(count: int, seed: int = 0, student_accuracy: float = 0.7, tokens: int = 12,
                      group_hard_share: float = 0.5) -> list[RouteRecord]:
    rng = random.Random(seed)
    records = []
    for index in range(count):
        hard = rng.random() < group_hard_share
        correct = rng.random() < (student_accuracy - 0.2 if hard else student_accuracy + 0.2)
        top, sampled = [], []
        for position in range(tokens):
            # wrong answers have one shaky token late in the answer; noise blurs both classes
            shaky = not correct and position == tokens - 3
            p = min(0.999, max(0.05, (0.45 if shaky else 0.95) + rng.gauss(0, 0.15)))
            rest = 1.0 - p
            row = [math.log(p), math.log(rest * 0.6), math.log(rest * 0.3)]
            top.append(row)
            sampled.append(row[0])
        records.append(RouteRecord(id=str(index), student_text="x", student_top=top, student_sampled=sampled,
                                   student_correct=correct, teacher_text="y", teacher_correct=rng.random() < 0.97,
                                   group="hard" if hard else "easy"))
    return records
