"""Shadow and escalation records as the gateway writes them, made from demo tickets with real token ids: the
teacher's answer is the ticket's ground truth tokenized by the demo tokenizer, each token its own top-1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runtime.store.records import ShadowRecord


def tokens(ids: list[int], texts: list[str], alternatives: int = 2) -> list[dict]:
    return [{"token": text, "id": token_id, "logprob": -0.01,
             "top": [[text, -0.01, token_id]] + [[f"alt{n}", -5.0 - n, (token_id + n + 1) % 500]
                                                 for n in range(alternatives - 1)]}
            for token_id, text in zip(ids, texts, strict=True)]


def make_records(tokenizer, tickets, start: datetime | None = None, kind: str = "shadow",
                 student_version: str = "initial", teacher_version: str | None = None) -> list[ShadowRecord]:
    start = start or datetime(2026, 12, 1, tzinfo=UTC)
    made = []
    for index, ticket in enumerate(tickets):
        answer = ticket.answer_json()
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        texts = [tokenizer.decode([token_id]) for token_id in ids]
        eos = tokens([tokenizer.eos_token_id], [""])
        made.append(ShadowRecord(
            request_id=f"{kind}-{student_version}-{index}", created_at=start + timedelta(seconds=index), kind=kind,
            student_model="demo-student", teacher_model="demo-teacher", route="student", route_reason="policy",
            prompt=ticket.messages(), student_answer=answer, student_tokens=tokens(ids, texts) + eos,
            student_version=student_version, teacher_version=teacher_version, token_ids=True,
            teacher_scores=tokens(ids, texts) if kind == "shadow" else None, teacher_answer=answer,
            teacher_tokens=tokens(ids, texts) + eos, aligned=kind == "shadow"))
    return made
