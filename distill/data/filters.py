"""Filters that decide which teacher answers become training targets. Each names why it drops an answer.

Per answer: `Truncated` (hit max_tokens), `JsonFields` (the demo's schema: a JSON object with these string fields),
`MatchesReference` (agrees with a known right answer, when the prompt has one), `MaxEntropy` (the teacher was
unsure: mean entropy over its top-k plus tail above a threshold). Per prompt: `SampleAgreement` (several samples
must mostly agree) and `Dedup` (identical samples are kept once). The first failing filter's name is the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from distill.data.cache import CachedAnswer


class Truncated:
    name = "truncated"

    def __call__(self, answer: CachedAnswer) -> bool:
        return answer.finish_reason != "length"


class JsonFields:
    name = "invalid_json"

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)

    def __call__(self, answer: CachedAnswer) -> bool:
        try:
            value = json.loads(answer.text)
        except json.JSONDecodeError:
            return False
        return isinstance(value, dict) and all(isinstance(value.get(name), str) for name in self.fields)


class MatchesReference:
    name = "wrong_answer"

    def __call__(self, answer: CachedAnswer) -> bool:
        if answer.reference is None:
            return True
        try:
            return json.loads(answer.text) == json.loads(answer.reference)
        except json.JSONDecodeError:
            return answer.text.strip() == answer.reference.strip()


class MaxEntropy:
    name = "unsure_teacher"

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, answer: CachedAnswer) -> bool:
        return mean_entropy(answer.topk_logprobs, answer.topk_ids) <= self.threshold


def mean_entropy(topk_logprobs: np.ndarray, topk_ids: np.ndarray) -> float:
    """Mean over tokens of the entropy of the top-k plus one tail bucket (a lower bound of the full entropy)."""
    if topk_logprobs.size == 0:
        return 0.0
    probs = np.where(topk_ids >= 0, np.exp(topk_logprobs.astype(np.float64)), 0.0)  # (T, k)
    tail = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, -probs * np.log(probs), 0.0).sum(axis=1)
        terms += np.where(tail > 0, -tail * np.log(tail), 0.0)
    return float(terms.mean())


class SampleAgreement:
    """Several samples of one prompt: keep those equal to the majority answer, if the majority is large enough."""

    name = "samples_disagree"

    def __init__(self, min_share: float = 0.5):
        self.min_share = min_share

    def __call__(self, answers: list[CachedAnswer]) -> list[bool]:
        counts = Counter(_normal(answer.text) for answer in answers)
        majority, count = counts.most_common(1)[0]
        if len(answers) < 2:
            return [True] * len(answers)
        if count / len(answers) < self.min_share:
            return [False] * len(answers)
        return [_normal(answer.text) == majority for answer in answers]


class Dedup:
    name = "duplicate"

    def __call__(self, answers: list[CachedAnswer]) -> list[bool]:
        seen: set[str] = set()
        keep = []
        for answer in answers:
            keep.append(answer.text not in seen)
            seen.add(answer.text)
        return keep


def apply_filters(answers: list[CachedAnswer], per_answer: Sequence, per_prompt: Sequence) -> list[CachedAnswer]:
    """The answers of one prompt, each marked kept or with the first reason it was dropped."""
    marked = []
    for answer in answers:
        reason = next((check.name for check in per_answer if not check(answer)), None)
        marked.append(replace(answer, kept=reason is None, drop_reason=reason))
    for check in per_prompt:
        alive = [answer for answer in marked if answer.kept]
        if not alive:
            break
        verdicts = iter(check(alive))
        marked = [answer if not answer.kept or next(verdicts) else replace(answer, kept=False,
                                                                             drop_reason=check.name)
                  for answer in marked]
    return marked


def _normal(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except json.JSONDecodeError:
        return text.strip()
