"""The teacher cache on disk: a folder of Parquet shards plus `manifest.json`.

One row per (prompt, sample): the conversation (JSON text), the teacher's answer text, its token ids, and for each
answer token the teacher's top-k token ids and logprobs (int32 and fp16, flattened to T·k; ids of -1 pad a token
that had fewer than k alternatives), whether the filters kept it and why not, and the constraint the answer was
generated under (JSON text in vLLM's `structured_outputs` shape; null for free text and in shards written before
the column), and the tools the prompt offered (JSON text, OpenAI's `tools` list, rendered by the chat template; null
for none and in shards written before the column). The manifest names the teacher, the tokenizer's hash (a trainer refuses a cache whose tokenizer differs
from its student's), k, temperature and seed. Shards are written whole and atomically (temp file + rename), so a crash loses at most the shard in progress
and a rerun resumes after the last complete one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
FORMAT = "kdgate-teacher-cache"
SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("sample", pa.int32()), ("messages", pa.string()), ("text", pa.string()),
    ("finish_reason", pa.string()), ("token_ids", pa.list_(pa.int32())), ("topk_ids", pa.list_(pa.int32())),
    ("topk_logprobs", pa.list_(pa.float16())), ("kept", pa.bool_()), ("drop_reason", pa.string()),
    ("reference", pa.string()), ("constraint", pa.string()), ("tools", pa.string()),
])


@dataclass
class Manifest:
    teacher: str
    tokenizer_hash: str
    top_k: int
    temperature: float
    samples_per_prompt: int
    seed: int
    prompts: str  # where the prompts came from
    format: str = FORMAT
    version: int = 1
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        _atomic_write(folder / MANIFEST, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ValueError(f"{folder} is not a teacher cache (no {MANIFEST}); create one with "
                             "`kdgate distill generate`")
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("version") != 1:
            raise ValueError(f"{path} is not a version-1 kdgate teacher cache")
        return cls(**raw)


@dataclass(frozen=True)
class CachedAnswer:
    prompt_id: str
    sample: int
    messages: list[dict]
    text: str
    finish_reason: str
    token_ids: np.ndarray  # (T,) int32
    topk_ids: np.ndarray  # (T, k) int32, -1 where a token had fewer alternatives
    topk_logprobs: np.ndarray  # (T, k) float16
    kept: bool = True
    drop_reason: str | None = None
    reference: str | None = None
    constraint: dict | None = None  # the constraint the answer was generated under (vLLM's structured_outputs shape)
    tools: list[dict] | None = None  # the tools the prompt offered (OpenAI's `tools`); the prompt renders with them

    def row(self) -> dict:
        return {"prompt_id": self.prompt_id, "sample": self.sample, "messages": json.dumps(self.messages),
                "text": self.text, "finish_reason": self.finish_reason, "token_ids": self.token_ids.tolist(),
                "topk_ids": self.topk_ids.reshape(-1).tolist(),
                "topk_logprobs": self.topk_logprobs.reshape(-1).astype(np.float16),
                "kept": self.kept, "drop_reason": self.drop_reason, "reference": self.reference,
                "constraint": json.dumps(self.constraint) if self.constraint is not None else None,
                "tools": json.dumps(self.tools) if self.tools else None}


def write_shard(folder: Path, index: int, answers: list[CachedAnswer]) -> Path:
    columns = {name: [answer.row()[name] for answer in answers] for name in SCHEMA.names}
    table = pa.table({name: pa.array(values, type=SCHEMA.field(name).type) for name, values in columns.items()})
    path = folder / f"shard-{index:05d}.parquet"
    temporary = path.with_suffix(".parquet.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return path


def shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.parquet"))


def read_answers(folder: Path, top_k: int, kept_only: bool = True) -> Iterator[CachedAnswer]:
    for path in shards(folder):
        for row in pq.read_table(path).to_pylist():
            if kept_only and not row["kept"]:
                continue
            tokens = len(row["token_ids"])
            yield CachedAnswer(
                prompt_id=row["prompt_id"], sample=row["sample"], messages=json.loads(row["messages"]),
                text=row["text"], finish_reason=row["finish_reason"],
                token_ids=np.asarray(row["token_ids"], dtype=np.int32),
                topk_ids=np.asarray(row["topk_ids"], dtype=np.int32).reshape(tokens, top_k),
                topk_logprobs=np.asarray(row["topk_logprobs"], dtype=np.float16).reshape(tokens, top_k),
                kept=row["kept"], drop_reason=row["drop_reason"], reference=row["reference"],
                constraint=json.loads(row["constraint"]) if row.get("constraint") else None,  # older shards: none
                tools=json.loads(row["tools"]) if row.get("tools") else None)


def done_keys(folder: Path) -> set[tuple[str, int]]:
    """(prompt id, sample) pairs already in complete shards: what a resumed run skips."""
    keys = set()
    for path in shards(folder):
        table = pq.read_table(path, columns=["prompt_id", "sample"])
        keys.update(zip(table.column("prompt_id").to_pylist(), table.column("sample").to_pylist(), strict=True))
    return keys


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
