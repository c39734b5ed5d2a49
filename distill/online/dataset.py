"""Records from live traffic into a teacher cache the recipe trains from, and a time-ordered held-out slice.

- **on-policy**: a shadowed answer of the *active* student version, its own tokens (ids) with the teacher's top-k
  at each of them (the teacher scored the student's answer, teacher-forced): the GKD signal, where the student
  goes when it is left to itself;
- **off-policy**: the teacher's own answer with its top-k (escalations and shadowed requests both carry it);
- **replay** (optional): answers from the student's original distillation cache, so that learning the new traffic
  does not cost what it knew (a student fine-tuned on a few hundred live records alone forgets: measured in
  docs/redistillation.md).

Every example keeps the constraint its answer was generated under (structured outputs; `Example.constraint`,
written to the cache's `constraint` column), so that a trainer can tell a grammar-shaped answer from a free one.

Only records with token ids are used (the ids must be the ones the models saw; no re-tokenizing), only records
scored by the current teacher version when the records name one, scrubbed prompts only (records keep no other).
The newest `holdout_share` of the records (by time) are kept out of training; the rest are mixed to
`on_policy_share` by repeating the scarcer kind, duplicates dropped.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from distill.data.cache import CachedAnswer, Manifest, read_answers, write_shard
from runtime.store.records import ShadowRecord, ShadowStore
from runtime.tokenizer_hash import tokenizer_hash

SHARD_ROWS = 1000


@dataclass(frozen=True)
class Example:
    record_id: str
    created_at: datetime
    policy: str  # "on" | "off" | "replay" (from the original distillation cache)
    messages: list[dict]
    token_ids: np.ndarray  # (T,)
    topk_ids: np.ndarray  # (T, k), -1 where fewer alternatives
    topk_logprobs: np.ndarray  # (T, k)
    text: str
    # the constraint the answer was generated under (the record's, vLLM's `structured_outputs` shape); None: free
    # text. The teacher's top-k of an on-policy example are unconstrained scores (prompt_logprobs apply no grammar),
    # of an off-policy one the grammar-masked distribution its answer was sampled from
    constraint: dict | None = None

    def key(self) -> tuple:
        return json.dumps(self.messages, sort_keys=True), self.token_ids.tobytes()


@dataclass(frozen=True)
class Dataset:
    train: list[Example]
    heldout: list[Example]  # off-policy examples of the newest records: the teacher's answers, to judge on
    heldout_records: list[ShadowRecord]
    figures: dict


def gather(store: ShadowStore, since: datetime | None, max_records: int) -> list[ShadowRecord]:
    """The newest `max_records` records since `since`, oldest first."""
    records = list(store.iter_records(since=since))
    return records[-max_records:]


def build(records: list[ShadowRecord], active_version: str, on_policy_share: float, holdout_share: float,
          teacher_version: str | None, seed: int = 0, replay_cache: Path | None = None,
          replay_share: float = 0.0) -> Dataset:
    usable = [record for record in records if record.token_ids and record.teacher_tokens
              and (teacher_version is None or record.teacher_version in (None, teacher_version))]
    usable.sort(key=lambda record: record.created_at)
    cut = len(usable) - max(1, round(len(usable) * holdout_share)) if usable else 0
    training, heldout_records = usable[:cut], usable[cut:]
    on = [example for record in training if (example := on_policy(record, active_version)) is not None]
    off = [example for record in training if (example := off_policy(record)) is not None]
    fresh = mix(on, off, on_policy_share, random.Random(seed))
    train = with_replay(fresh, replay_cache, replay_share, random.Random(seed + 1))
    heldout = [example for record in heldout_records if (example := off_policy(record)) is not None]
    figures = {"records": len(records), "usable": len(usable), "without_ids": sum(not r.token_ids for r in records),
               "old_teacher": sum(teacher_version is not None and r.teacher_version not in (None, teacher_version)
                                  for r in records),
               "on_policy_available": len(on), "off_policy_available": len(off), "train": len(train),
               "train_on_policy": sum(example.policy == "on" for example in train),
               "train_replay": sum(example.policy == "replay" for example in train), "heldout": len(heldout),
               "kinds": {kind: sum(r.kind == kind for r in usable) for kind in ("shadow", "escalation")}}
    return Dataset(train, heldout, heldout_records, figures)


def on_policy(record: ShadowRecord, active_version: str) -> Example | None:
    """The student's own tokens with the teacher's top-k at each (the end token, which the teacher did not score
    as text, is left out)."""
    if record.kind != "shadow" or record.student_version != active_version or not record.teacher_scores \
            or not record.aligned:
        return None
    scores = record.teacher_scores
    ids = [token["id"] for token in record.student_tokens[:len(scores)]]
    if any(token_id is None for token_id in ids):
        return None
    top_ids, top_logprobs = _topk(scores)
    return Example(record.request_id, record.created_at, "on", record.prompt, np.asarray(ids, dtype=np.int32),
                   top_ids, top_logprobs, record.student_answer, record.constraint)


def off_policy(record: ShadowRecord) -> Example | None:
    tokens = record.teacher_tokens or []
    ids = [token["id"] for token in tokens]
    if not ids or any(token_id is None for token_id in ids):
        return None
    top_ids, top_logprobs = _topk(tokens)
    return Example(record.request_id, record.created_at, "off", record.prompt, np.asarray(ids, dtype=np.int32),
                   top_ids, top_logprobs, record.teacher_answer or "", record.constraint)


def mix(on: list[Example], off: list[Example], on_share: float, rng: random.Random) -> list[Example]:
    """Every example of both kinds (duplicates dropped), the scarcer kind repeated until the on-policy share is
    `on_share`: nothing learnt from live traffic is thrown away to meet a ratio. 0 or 1: one kind only."""
    on, off = _unique(on), _unique(off)
    if on_share <= 0.0 or not on:
        chosen = list(off) if on_share < 1.0 else []
    elif on_share >= 1.0 or not off:
        chosen = list(on)
    elif len(on) / (len(on) + len(off)) < on_share:  # too few on-policy: repeat them
        chosen = list(off) + _repeat(on, round(len(off) * on_share / (1 - on_share)), rng)
    else:
        chosen = list(on) + _repeat(off, round(len(on) * (1 - on_share) / on_share), rng)
    rng.shuffle(chosen)
    return chosen


def _repeat(examples: list[Example], count: int, rng: random.Random) -> list[Example]:
    """`count` examples: each one ⌊count/n⌋ times, the remainder drawn without replacement."""
    whole, rest = divmod(count, len(examples))
    return examples * whole + rng.sample(examples, rest)


def replay(cache: Path, count: int, rng: random.Random, exclude: set | None = None) -> list[Example]:
    """Up to `count` examples from the student's original distillation cache (`kdgate distill generate`): mixed
    in so that what the student already knew is rehearsed while it learns the new traffic."""
    manifest = Manifest.load(cache)
    pool = [Example(f"replay-{answer.prompt_id}-{answer.sample}", datetime.min, "replay", answer.messages,
                    answer.token_ids, answer.topk_ids, answer.topk_logprobs.astype(np.float32), answer.text,
                    answer.constraint)
            for answer in read_answers(cache, manifest.top_k)]
    pool = [example for example in pool if exclude is None or example.key() not in exclude]
    return rng.sample(pool, min(count, len(pool)))


def check_replay_tokenizer(cache: Path, student_dir: Path) -> None:
    """ValueError unless the replay cache's token ids are in the student's tokenizer: they are trained on as the
    student's own (the cache a job writes carries the student's hash, so the recipe cannot tell)."""
    made, student = Manifest.load(cache).tokenizer_hash, tokenizer_hash(student_dir)
    if made != student:
        raise ValueError(f"dataset.replay_cache {cache} holds token ids of another tokenizer ({made[:12]}…) than the "
                         f"student {student_dir} ({student[:12]}…): give the cache it was distilled from, or null")


def with_replay(train: list[Example], cache: Path | None, share: float, rng: random.Random) -> list[Example]:
    """The training examples plus replayed ones making up `share` of the whole."""
    if cache is None or share <= 0 or not train:
        return train
    wanted = round(len(train) * share / (1 - share))
    mixed = train + replay(cache, wanted, rng, {example.key() for example in train})
    rng.shuffle(mixed)
    return mixed


def write_cache(folder: Path, examples: list[Example], teacher: str, tokenizer_dir: Path, source: str) -> Manifest:
    """A teacher cache (`distill.data.cache`) the recipe reads, with the student's tokenizer hash."""
    folder.mkdir(parents=True, exist_ok=True)
    top_k = max((example.topk_ids.shape[1] for example in examples), default=1)
    answers = [CachedAnswer(prompt_id=example.record_id, sample=0, messages=example.messages, text=example.text,
                            finish_reason="stop", token_ids=example.token_ids,
                            topk_ids=_pad(example.topk_ids, top_k, -1),
                            topk_logprobs=_pad(example.topk_logprobs, top_k, -9999.0).astype(np.float16),
                            constraint=example.constraint, tools=tools_of(example.constraint))
               for example in examples]
    for index in range(0, len(answers), SHARD_ROWS):
        write_shard(folder, index // SHARD_ROWS, answers[index:index + SHARD_ROWS])
    manifest = Manifest(teacher=teacher, tokenizer_hash=tokenizer_hash(tokenizer_dir), top_k=top_k, temperature=0.0,
                        samples_per_prompt=1, seed=0, prompts=source, rows=len(answers), kept=len(answers))
    manifest.save(folder)
    return manifest


def tools_of(constraint: dict | None) -> list[dict] | None:
    """The tools an answer was generated with: a tool call's constraint holds them (gateway/tools/grammar.py), and
    the recipe renders the prompt with them, as the student and the teacher saw it."""
    return constraint.get("tools") if constraint is not None and "tools" in constraint else None


def _topk(tokens: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(token["top"]) for token in tokens), default=1) or 1
    ids = np.full((len(tokens), width), -1, dtype=np.int32)
    logprobs = np.full((len(tokens), width), -9999.0, dtype=np.float32)
    for row, token in enumerate(tokens):
        for column, top in enumerate(token["top"]):
            if len(top) > 2 and top[2] is not None:
                ids[row, column], logprobs[row, column] = top[2], top[1]
    return ids, logprobs


def _pad(array: np.ndarray, width: int, fill: float) -> np.ndarray:
    if array.shape[1] == width:
        return array
    padded = np.full((array.shape[0], width), fill, dtype=array.dtype)
    padded[:, :array.shape[1]] = array
    return padded


def _unique(examples: list[Example]) -> list[Example]:
    seen, kept = set(), []
    for example in examples:
        if example.key() not in seen:
            seen.add(example.key())
            kept.append(example)
    return kept
