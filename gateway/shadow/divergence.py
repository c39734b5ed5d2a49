"""Student–teacher divergence of one answer, from top-k logprobs (what vLLM returns), with what each figure
estimates and how top-k truncation biases it.

Inputs, per student answer token t: the student's reported alternatives at t (its own top-k, from generation)
and the teacher's, teacher-forced on the same prefix (its top-k at t from `prompt_logprobs`, plus its logprob of
the student's token). Tokens are matched by their ids when both sides report ids for every token (the local
engine always does; vLLM with `return_tokens_as_token_ids`), else by their text: distillation pairs share a
tokenizer.

- `kl_per_token`: forward KL(teacher ‖ student) at each position, over the union of both top-k supports plus one
  tail bucket. A token only one side reports has an unknown probability on the other side, so it joins the tail
  bucket on both sides; the result is the KL of a coarsening of the two full distributions, which by the
  data-processing inequality is a **lower bound** on the full-vocabulary KL, exact when both top-k lists hold all
  the mass. Larger k tightens it.
- `top1_agreement`: share of positions where the teacher's most likely token is the student's token. Exact as long
  as the teacher's top-1 is reported (k ≥ 1).
- `teacher_nll`: mean −log p_teacher(student token): how surprising the student's answer is to the teacher. Exact
  (the scored token's own logprob is always reported).
- `answers_agree` / `field_agreement`: whether the two final answers match exactly, and for JSON answers the share
  of the teacher's fields the student got the same.

A constrained answer (structured outputs) is compared with the teacher's scores held to the same constraint
(`gateway.shadow.masking`): the student's logprobs are the grammar-masked distribution's, the teacher's scoring
applies no grammar, and every figure here is then computed from what the constraint allows.

When the teacher tokenizes the student's answer differently from how the student generated it (same tokenizer,
non-canonical generation), positions cannot be paired: KL and agreement are then NaN and `aligned` is False;
the NLL (over the teacher's own tokenization of the same text) stays valid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.contract import LOGPROB_FLOOR, TokenLogprob, TopLogprob


@dataclass(frozen=True)
class Divergence:
    tokens: int
    aligned: bool
    kl_per_token: tuple[float, ...]
    mean_kl: float
    top1_agreement: float
    teacher_nll: float
    answers_agree: bool | None = None
    field_agreement: float | None = None


def token_kl(teacher: dict[str, float], student: dict[str, float]) -> float:
    """KL(teacher ‖ student) over the tokens both report plus one tail bucket (natural log)."""
    shared = [token for token in teacher if token in student]
    p = np.array([_prob(teacher[token]) for token in shared])
    q = np.array([_prob(student[token]) for token in shared])
    p_tail = max(0.0, 1.0 - float(p.sum()))
    q_tail = max(0.0, 1.0 - float(q.sum()))
    total = float(np.sum(_kl_terms(p, q)))
    total += float(_kl_terms(np.array([p_tail]), np.array([q_tail]))[0])
    return max(total, 0.0)


def divergence(student: Sequence[TokenLogprob], teacher_scored: Sequence[TokenLogprob], student_answer: str,
               teacher_answer: str | None) -> Divergence:
    """Figures for one answer; `teacher_scored` is the teacher's scoring of `student_answer` (`Backend.score`)."""
    if not teacher_scored:
        raise ValueError("the teacher scored no tokens; there is nothing to compare")
    by_ids = _all_ids(student) and _all_ids(teacher_scored)
    student = _scored_prefix(student, teacher_scored) if by_ids else answer_tokens(student, student_answer)
    nll = -float(np.mean([max(entry.logprob, LOGPROB_FLOOR) for entry in teacher_scored]))
    key = _by_id if by_ids else _by_text
    aligned = len(student) == len(teacher_scored) and all(
        key(a) == key(b) for a, b in zip(student, teacher_scored, strict=False))
    if aligned:
        kls = tuple(token_kl(_alternatives(t, key), _alternatives(s, key))
                    for s, t in zip(student, teacher_scored, strict=True))
        agreement = float(np.mean([_argmax(_alternatives(t, key)) == key(s)
                                   for s, t in zip(student, teacher_scored, strict=True)]))
        mean_kl = float(np.mean(kls))
    else:
        kls, agreement, mean_kl = (), math.nan, math.nan
    agree, fields = _answer_agreement(student_answer, teacher_answer)
    return Divergence(tokens=len(teacher_scored), aligned=aligned, kl_per_token=kls, mean_kl=mean_kl,
                      top1_agreement=agreement, teacher_nll=nll, answers_agree=agree, field_agreement=fields)


def answer_tokens(tokens: Sequence[TokenLogprob], answer: str) -> Sequence[TokenLogprob]:
    """The tokens that spell `answer`: a trailing end-of-sequence token (reported with its logprob, but not part of
    the text) is dropped, since the teacher scores the text."""
    length = 0
    for index, entry in enumerate(tokens):
        if length >= len(answer):
            return tokens[:index]
        length += len(entry.token)
    return tokens


def _by_id(entry: TokenLogprob | TopLogprob) -> int | None:
    return entry.token_id


def _by_text(entry: TokenLogprob | TopLogprob) -> str:
    return entry.token


def _scored_prefix(student: Sequence[TokenLogprob], scored: Sequence[TokenLogprob]) -> Sequence[TokenLogprob]:
    """With ids on both sides, the student's tokens that spell the answer are those the teacher scored: tokens past
    them are outside the text (the end token, a stop string's). Texts cannot say where the answer ends here: a
    character split over byte tokens is one replacement character per byte in each token's own text."""
    head = student[:len(scored)]
    same = len(head) == len(scored) and all(a.token_id == b.token_id for a, b in zip(head, scored, strict=True))
    return head if same else student


def _all_ids(tokens: Sequence[TokenLogprob]) -> bool:
    return all(entry.token_id is not None and all(top.token_id is not None for top in entry.top_logprobs)
               for entry in tokens)


def _alternatives(entry: TokenLogprob, key: Callable = _by_text) -> dict:
    """The token's reported distribution: its alternatives, and the token itself (always known), by `key`."""
    reported = {key(alternative): alternative.logprob for alternative in entry.top_logprobs}
    reported.setdefault(key(entry), entry.logprob)
    return reported


def _argmax(reported: dict) -> str | int:
    return max(reported, key=reported.__getitem__)


def _prob(logprob: float) -> float:
    return 0.0 if logprob <= LOGPROB_FLOOR else math.exp(min(logprob, 0.0))


def _kl_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p·log(p/q) with 0·log 0 = 0; a q of 0 where p > 0 is floored at 1e-30 (a finite cap instead of +inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-30)))
    return np.where(p > 0, terms, 0.0)


def _answer_agreement(student: str, teacher: str | None) -> tuple[bool | None, float | None]:
    if teacher is None:
        return None, None
    agree = student.strip() == teacher.strip()
    try:
        student_json, teacher_json = json.loads(student), json.loads(teacher)
    except (json.JSONDecodeError, TypeError):
        return agree, None
    if not isinstance(teacher_json, dict) or not teacher_json:
        return agree, None
    if not isinstance(student_json, dict):
        return agree, 0.0
    return agree, sum(student_json.get(key) == value for key, value in teacher_json.items()) / len(teacher_json)
