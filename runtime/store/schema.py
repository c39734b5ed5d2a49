"""The record store's tables (SQLAlchemy 2). Changes go through an Alembic migration in `migrations/versions/`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text, false
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
    teacher_version: Mapped[str | None] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(16))
    route_reason: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    # what was said (the prompt scrubbed before storage)
    prompt: Mapped[list] = mapped_column(JSON)
    student_answer: Mapped[str] = mapped_column(Text)
    # [{"token", "id", "logprob", "top": [[token, logprob, id], ...]}] as generated, ending with the end token when
    # there was one (`runtime.store.records.tokens_json`); records from before migration 0003 have no ids
    student_tokens: Mapped[list] = mapped_column(JSON)
    token_ids: Mapped[bool] = mapped_column(Boolean, default=False)  # every student token carries its id
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
    sample_rate: Mapped[float | None] = mapped_column(Float)
    # the client's constraint on the answer (vLLM's `structured_outputs` shape: {"json": schema}, {"regex": ...},
    # {"grammar": ...}); null for free text. `teacher_scores` never are constrained (vLLM's prompt_logprobs apply no
    # grammar): `constraint_masked` says whether the figures above were computed from them held to the constraint
    # (true), or the answer was constrained but they could not be (false: a client grammar; null: no constraint)
    constraint: Mapped[dict | None] = mapped_column(JSON)
    constraint_masked: Mapped[bool | None] = mapped_column(Boolean)
    # the uniform drift sample: drawn before routing (`shadow.sample_rate`), measured whatever route it took, so its
    # figures compare student versions on the same traffic. A shadow record's figures are of `student_answer`; an
    # escalation's are of the student's whole answer to the same request, asked for off the request path
    # (`drift_answer`, `drift_tokens` in `student_tokens`' shape), which `teacher_scores` then score. Null before 0008
    drift_sample: Mapped[bool | None] = mapped_column(Boolean)
    drift_answer: Mapped[str | None] = mapped_column(Text)
    drift_tokens: Mapped[list | None] = mapped_column(JSON)

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
    # drawn for the drift sample: claimed before the others, so that the drift signal does not wait behind the
    # recorded escalations (training data, which can). False for jobs stored before migration 0009
    drift: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_shadow_jobs_claimed_until", "claimed_until"),)


VERSION_STATES = ("candidate", "canary", "active", "retired", "rejected")
VERSION_KINDS = ("model", "lora", "endpoint")


class StudentVersionRow(Base):
    """One student the gateways may serve: a model folder, a LoRA adapter over the configured student, or a server
    of its own (blue/green), with its state and what it was admitted with."""

    __tablename__ = "student_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    model_dir: Mapped[str | None] = mapped_column(String(1024))
    adapter_path: Mapped[str | None] = mapped_column(String(1024))
    base_url: Mapped[str | None] = mapped_column(String(1024))
    served_model: Mapped[str | None] = mapped_column(String(256))
    tokenizer_hash: Mapped[str | None] = mapped_column(String(64))
    policy_file: Mapped[str | None] = mapped_column(String(1024))
    handoff_min_prob: Mapped[float | None] = mapped_column(Float)
    figures: Mapped[dict | None] = mapped_column(JSON)
    notes: Mapped[str | None] = mapped_column(Text)
    previous: Mapped[str | None] = mapped_column(String(64))  # the active version this one replaced
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StudentSlotRow(Base):
    """The one row (id 1) that says what serves: every gateway process reads it; every change bumps `revision`."""

    __tablename__ = "student_slot"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active: Mapped[str | None] = mapped_column(String(64))
    canary: Mapped[str | None] = mapped_column(String(64))
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


JOB_STATES = ("queued", "running", "succeeded", "rejected", "skipped", "failed", "cancelled")
JOB_TRIGGERS = ("alert", "manual", "schedule", "teacher")


class TrainJobRow(Base):
    """One re-distillation job (distill.service): why it started, where it is, what it measured, how it ended."""

    __tablename__ = "train_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    trigger_key: Mapped[str | None] = mapped_column(String(512), unique=True)  # dedupes a retried alert
    options: Mapped[dict] = mapped_column(JSON)
    step: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    figures: Mapped[dict | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    candidate: Mapped[str | None] = mapped_column(String(64))  # the student version it trained
    runner_ref: Mapped[str | None] = mapped_column(String(256))  # a pid, or a TrainJob's name
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_train_jobs_state", "state"),)
