"""Routing records: one JSON line per request, the data that calibration, fitting and evaluation read.

A record holds the student's answer with its per-token top-k logprobs (what the router sees), and, when known,
whether the student's and the teacher's whole answers were right (what the router is judged on). The demo task
labels them from its exact ground truth (`kdgate router collect`); in production the shadow store supplies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from router.signals import LOGPROB_FLOOR, TokenSignals, signals_from_rows


@dataclass(frozen=True)
class RouteRecord:
    id: str
    student_text: str
    student_top: list[list[float]]  # per generated token, the k alternatives' logprobs (sampled first, vLLM order)
    student_sampled: list[float]  # per generated token, the sampled token's logprob
    student_correct: bool | None = None
    teacher_text: str | None = None
    teacher_correct: bool | None = None
    group: str | None = None  # a slice label for reports (the demo's ticket shape)
    student_tokens: list[str] | None = None  # per generated token, its text (for handoff replays)
    teacher_completion_tokens: int | None = None  # the teacher's answer length (teacher token cost)
    reference: str | None = None  # the right answer, when known (the demo's ground truth), to judge new answers
    messages: list[dict] | None = None  # the conversation the student answered, to ask again (handoff replays)
    structured_outputs: dict | None = None  # the constraint both answered under (vLLM's shape); None: free text
    tools: list[dict] | None = None  # the tools offered (OpenAI's shape): the answer may call them (`tool_choice: auto`)

    def signals(self) -> TokenSignals:
        return signals_from_rows(self.student_top, self.student_sampled)

    def to_json(self) -> str:
        return json.dumps({
            "id": self.id, "group": self.group, "reference": self.reference, "messages": self.messages,
            "structured_outputs": self.structured_outputs, "tools": self.tools,
            "student": {"text": self.student_text, "correct": self.student_correct, "tokens": self.student_tokens,
                        "sampled": self.student_sampled, "top": self.student_top},
            "teacher": {"text": self.teacher_text, "correct": self.teacher_correct,
                        "completion_tokens": self.teacher_completion_tokens},
        }, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> RouteRecord:
        raw = json.loads(line)
        student, teacher = raw["student"], raw.get("teacher") or {}
        return cls(id=str(raw["id"]), group=raw.get("group"), student_text=student["text"],
                   student_top=student["top"], student_sampled=student["sampled"],
                   student_correct=student.get("correct"), teacher_text=teacher.get("text"),
                   teacher_correct=teacher.get("correct"), student_tokens=student.get("tokens"),
                   teacher_completion_tokens=teacher.get("completion_tokens"), reference=raw.get("reference"),
                   messages=raw.get("messages"), structured_outputs=raw.get("structured_outputs"),
                   tools=raw.get("tools"))


def floor(logprob: float) -> float:
    """A logprob as JSON can carry it: -inf becomes vLLM's -9999.0."""
    return max(float(logprob), LOGPROB_FLOOR)


def write_records(path: Path, records: Iterable[RouteRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for record in records:
            out.write(record.to_json() + "\n")


def read_records(path: Path) -> list[RouteRecord]:
    records = []
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(RouteRecord.from_json(line))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number} is not a routing record ({error!r}); records come from "
                                 "`kdgate router collect` or the shadow store export") from None
    if not records:
        raise ValueError(f"{path} holds no routing records")
    return records


def labelled(records: list[RouteRecord], need_teacher: bool = False) -> list[RouteRecord]:
    """The records whose labels are known; refuses a set with none."""
    kept = [record for record in records if record.student_correct is not None
            and (not need_teacher or record.teacher_correct is not None)]
    if not kept:
        what = "student and teacher" if need_teacher else "student"
        raise ValueError(f"no record has a {what} correctness label; label them (the demo task does) first")
    return kept
