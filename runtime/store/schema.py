"""The shadow store's tables (SQLAlchemy 2). Changes go through an Alembic migration in `migrations/versions/`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KINDS = ("shadow", "escalation")


class Base(DeclarativeBase):
    pass


class ShadowRow(Base):
    """One shadowed student answer (`shadow`) or one request the student did not finish (`escalation`)."""

    __tablename__ = "shadow_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))
    # who answered, and why
    student_model: Mapped[str] = mapped_column(String(256))
    student_version: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[str | None] = mapped_column(String(128))
    teacher_model: Mapped[str] = mapped_column(String(256))
    route: Mapped[str] = mapped_column(String(16))
    route_reason: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    # what was said (the prompt scrubbed before storage)
    prompt: Mapped[list] = mapped_column(JSON)
    student_answer: Mapped[str] = mapped_column(Text)
    # [{"token", "logprob", "top": [[token, logprob], ...]}] as generated, ending with the end token when there was one
    student_tokens: Mapped[list] = mapped_column(JSON)
    teacher_scores: Mapped[list | None] = mapped_column(JSON)  # the teacher's scoring of the answer text, same shape
    teacher_answer: Mapped[str | None] = mapped_column(Text)
    teacher_tokens: Mapped[list | None] = mapped_column(JSON)
    # divergence (null where it could not be computed; see gateway.shadow.divergence)
    aligned: Mapped[bool | None] = mapped_column(Boolean)
    mean_kl: Mapped[float | None] = mapped_column(Float)
    top1_agreement: Mapped[float | None] = mapped_column(Float)
    teacher_nll: Mapped[float | None] = mapped_column(Float)
    answers_agree: Mapped[bool | None] = mapped_column(Boolean)
    field_agreement: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_shadow_records_created_at", "created_at"),
                      Index("ix_shadow_records_kind_created_at", "kind", "created_at"))


class JobRow(Base):
    """A shadow job acknowledged and not yet completed: the raw request (the teacher must see what the student saw),
    so it lives only until the worker has written its record."""

    __tablename__ = "shadow_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # a worker's lease
    claim: Mapped[str | None] = mapped_column(String(32))  # which claim holds it

    __table_args__ = (Index("ix_shadow_jobs_claimed_until", "claimed_until"),)
