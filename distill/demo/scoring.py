"""Score model answers on the demo task: whole-answer exact match and per-field accuracy."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from distill.demo.task import ANSWER_FIELDS


def parse_answer(text: str) -> dict[str, str] | None:
    """The answer object, or None when the text is not one JSON object with string fields."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(value, dict):
        return None
    return {key: item for key, item in value.items() if isinstance(item, str)}


@dataclass
class Scoreboard:
    """Running counts over a set of (prediction, gold) pairs."""

    total: int = 0
    exact: int = 0
    valid_json: int = 0
    field_correct: dict[str, int] = field(default_factory=lambda: {key: 0 for key in ANSWER_FIELDS})

    def add(self, prediction_text: str, gold: dict[str, str]) -> bool:
        self.total += 1
        predicted = parse_answer(prediction_text)
        if predicted is None:
            return False
        self.valid_json += 1
        hits = {key: predicted.get(key) == gold[key] for key in ANSWER_FIELDS}
        for key, hit in hits.items():
            self.field_correct[key] += hit
        whole = all(hits.values()) and set(predicted) == set(ANSWER_FIELDS)
        self.exact += whole
        return whole

    def summary(self) -> dict[str, float]:
        denominator = max(self.total, 1)
        result = {"n": self.total, "exact_match": self.exact / denominator, "valid_json": self.valid_json / denominator}
        result.update({f"{key}_accuracy": count / denominator for key, count in self.field_correct.items()})
        return result


def score(predictions: Iterable[str], golds: Iterable[dict[str, str]]) -> dict[str, float]:
    board = Scoreboard()
    for prediction, gold in zip(predictions, golds, strict=True):
        board.add(prediction, gold)
    return board.summary()
