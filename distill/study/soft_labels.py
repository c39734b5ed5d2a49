"""What the teacher's cached top-k says beyond its own answer, field by field of the answers' JSON.

KD differs from SFT on the teacher's answers only where the teacher puts mass off the token it wrote: on a token
where that mass is ~0 both losses ask for the same thing. This measures where that mass is, per answer field (the
JSON key each token falls under), so the study's table can say how much the soft labels could add and where.

    mass off the top token: Σ over tokens of (1 − p(top-1)), each field's share of it
    uncertain tokens: the share of a field's tokens where p(top-1) < 0.9
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from distill.data.cache import read_answers

KEY = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:')
OUTSIDE = "(outside a field)"
UNCERTAIN_BELOW = 0.9


def fields_of(pieces: list[str]) -> list[str]:
    """The JSON key each token's text falls under: the last `"key":` written before the token ends (the key's own
    tokens count as outside until it is complete)."""
    fields, text, current = [], "", OUTSIDE
    for piece in pieces:
        text += piece
        keys = KEY.findall(text[-64:])
        if keys:
            current = keys[-1]
        fields.append(current)
    return fields


def soft_label_mass(cache: Path, tokenizer_dir: Path, top_k: int) -> dict:
    """Per field: tokens, the mean mass off the top token, its share of all of it, and the uncertain tokens' share."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    off_top: dict[str, list[float]] = {}
    for answer in read_answers(cache, top_k):
        top1 = np.exp(answer.topk_logprobs[:, 0].astype(np.float64))
        pieces = [tokenizer.decode([int(token)]) for token in answer.token_ids]
        for field, mass in zip(fields_of(pieces), 1.0 - top1, strict=True):
            off_top.setdefault(field, []).append(float(mass))
    total = sum(sum(masses) for masses in off_top.values()) or 1.0
    result = {}
    for field, masses in sorted(off_top.items(), key=lambda item: -sum(item[1])):
        mass = np.array(masses)
        result[field] = {"tokens": int(mass.size), "mean_off_top": float(mass.mean()),
                         "share_of_off_top": float(mass.sum() / total),
                         "uncertain": float((mass > 1.0 - UNCERTAIN_BELOW).mean())}
    return result


def measured(out: Path, cache: Path, tokenizer_dir: Path, top_k: int) -> dict:
    """`soft_label_mass` of the study's teacher cache, kept in out/soft-labels.json."""
    path = out / "soft-labels.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = soft_label_mass(cache, tokenizer_dir, top_k)
    path.write_text(json.dumps(result, indent=1))
    return result
