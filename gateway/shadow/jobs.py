"""The durable shadow job queue: a table in the shadow store, so that an acknowledged job survives any exit.

A job is *acknowledged* once its row is committed (`kdgate_shadow_acknowledged_total`): from then on a crash can
delay it, never lose it. Workers take jobs by *claiming* them — one UPDATE that sets a lease on rows whose lease is
free or expired, re-checked row by row, so two processes never hold the same job — and *complete* one by writing
its record and deleting the job in a single transaction (a crash between the two cannot duplicate the record;
the record's unique request id refuses a second one anyway). Jobs drawn for the drift sample are claimed before
the others (the drift alert reads only them; recorded escalations are training data, which can wait), oldest first
within each; each class has its own `shadow.queue_size` places in the store, so a backlog of recorded escalations
never crowds the drift sample out (`within_room`). A job whose teacher call fails is released for a later try
after an exponential backoff (`retry_delay_s`: 1 s doubling to 60 s, jittered), so a teacher restart of a few
minutes costs nothing; it is dropped only once it is older than `retry_for_s`. Jobs hold the raw request (the
teacher must see what the student saw) and are deleted when done; the stored record holds the scrubbed prompt.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from router.policy import RouteDecision
from runtime.contract import TokenLogprob
from runtime.store.records import ShadowRecord, ShadowStore, record_row, tokens_from_json, tokens_json
from runtime.store.schema import JobRow, ShadowRow


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    kind: str  # "shadow": the student answered, compare; "escalation": the student did not finish
    messages: tuple[dict, ...]
    student_answer: str
    student_tokens: tuple[TokenLogprob, ...]
    decision: RouteDecision
    student_model: str
    max_tokens: int
    created_at: datetime
    student_version: str | None = None  # the version that produced the answer (the canary's, when it served)
    constraint: dict | None = None  # the client's constraint on the answer (vLLM's `structured_outputs` shape)
    drift: bool = False  # drawn for the uniform drift sample before routing: measured whatever route it took
    sampling: dict | None = None  # the client's sampling (SamplingParams' fields): a drift escalation's student
    # answer is drawn as the student would have served it


@dataclass(frozen=True)
class Claimed:
    job_id: int
    attempts: int
    job: ShadowJob


RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def retry_delay_s(attempts: int, rng: random.Random | None = None) -> float:
    """Wait before try `attempts + 1`: 1, 2, 4 ... 60 s, each scaled by a random 0.5-1 so that the jobs a teacher
    outage failed together do not all come back at the same instant."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempts, 16)) * (rng or random).uniform(0.5, 1.0)


class JobQueue:
    def __init__(self, store: ShadowStore, retry_for_s: float = 1800.0):
        self.store = store
        self.retry_for_s = retry_for_s

    def enqueue(self, jobs: list[ShadowJob]) -> int:
        """Persist jobs (one transaction); a job already queued is skipped. Returns how many are now stored."""
        rows = [JobRow(request_id=job.request_id, created_at=self.store._db_time(job.created_at),
                       payload=to_payload(job), attempts=0, drift=job.drift) for job in jobs]
        try:
            with Session(self.store.engine) as session, session.begin():
                session.add_all(rows)
            return len(rows)
        except IntegrityError:  # a duplicate in the batch: store them one by one, skipping it
            stored = 0
            for row in rows:
                try:
                    with Session(self.store.engine) as session, session.begin():
                        session.add(JobRow(request_id=row.request_id, created_at=row.created_at,
                                           payload=row.payload, attempts=0, drift=row.drift))
                    stored += 1
                except IntegrityError:
                    continue
            return stored

    def claim(self, limit: int, lease_s: float, now: datetime | None = None) -> list[Claimed]:
        """Take up to `limit` jobs whose lease is free or expired: the drift sample's first (the drift signal
        reads only them), oldest first within each."""
        now = now or datetime.now(UTC)
        token = uuid.uuid4().hex
        free = or_(JobRow.claimed_until.is_(None), JobRow.claimed_until < self.store._db_time(now))
        oldest = select(JobRow.id).where(free).order_by(JobRow.drift.desc(), JobRow.id).limit(limit).scalar_subquery()
        with Session(self.store.engine) as session, session.begin():
            session.execute(update(JobRow).where(and_(JobRow.id.in_(oldest), free)).values(
                claimed_until=self.store._db_time(now + timedelta(seconds=lease_s)), claim=token)
                .execution_options(synchronize_session=False))
            rows = session.scalars(select(JobRow).where(JobRow.claim == token)
                                   .order_by(JobRow.drift.desc(), JobRow.id)).all()
            return [Claimed(row.id, row.attempts, from_payload(row.payload)) for row in rows]

    def complete(self, claimed: Claimed, record: ShadowRecord) -> bool:
        """Write the record and delete the job, together. False when the record already existed."""
        try:
            with Session(self.store.engine) as session, session.begin():
                session.add(record_row(self.store, record))
                session.execute(delete(JobRow).where(JobRow.id == claimed.job_id))
            return True
        except IntegrityError:  # completed before (another process, or a retry): the job is done
            with Session(self.store.engine) as session, session.begin():
                session.execute(delete(JobRow).where(JobRow.id == claimed.job_id))
            return False

    def release(self, claimed: Claimed, now: datetime | None = None) -> bool:
        """The job failed this time: free it for a try after `retry_delay_s` (its lease is the wait), or drop it
        once it is older than `retry_for_s`. True if kept."""
        now = now or datetime.now(UTC)
        created = claimed.job.created_at if claimed.job.created_at.tzinfo else \
            claimed.job.created_at.replace(tzinfo=UTC)
        with Session(self.store.engine) as session, session.begin():
            if (now - created).total_seconds() >= self.retry_for_s:
                session.execute(delete(JobRow).where(JobRow.id == claimed.job_id))
                return False
            retry_at = now + timedelta(seconds=retry_delay_s(claimed.attempts))
            session.execute(update(JobRow).where(JobRow.id == claimed.job_id).values(
                attempts=claimed.attempts + 1, claimed_until=self.store._db_time(retry_at), claim=None))
            return True

    def drop(self, claimed: Claimed) -> None:
        with Session(self.store.engine) as session, session.begin():
            session.execute(delete(JobRow).where(JobRow.id == claimed.job_id))

    def pending(self) -> int:
        with Session(self.store.engine) as session:
            return session.scalar(select(func.count()).select_from(JobRow)) or 0

    def backlog(self) -> dict[bool, int]:
        """Stored jobs by class: `True`, drawn for the drift sample; `False`, the others."""
        with Session(self.store.engine) as session:
            counts = dict(session.execute(select(JobRow.drift, func.count()).group_by(JobRow.drift)).all())
        return {True: counts.get(True, 0), False: counts.get(False, 0)}

    def request_ids(self) -> set[str]:
        """Every job's and every record's request id (tests count what survived a crash)."""
        with Session(self.store.engine) as session:
            jobs = set(session.scalars(select(JobRow.request_id)))
            return jobs | set(session.scalars(select(ShadowRow.request_id)))


def within_room(batch: list[ShadowJob], backlog: dict[bool, int], size: int) -> list[ShadowJob]:
    """The jobs of `batch` that fit: `size` stored places for the drift sample's jobs and `size` for the others.
    One bound for both let a teacher behind drifted traffic fill the store with recorded escalations (training
    data) and drop the drift sample's new jobs, the only ones the drift alert and the canary read: a run of the
    drift loop on the SmolLM2 pair dropped 330 jobs of both classes at a backlog of 256."""
    room = {drift: size - backlog.get(drift, 0) for drift in (True, False)}
    kept = []
    for job in batch:
        if room[job.drift] > 0:
            room[job.drift] -= 1
            kept.append(job)
    return kept


# ------------------------------------------------------------------------------------------------ the payload


def to_payload(job: ShadowJob) -> dict:
    decision = job.decision
    return {"request_id": job.request_id, "kind": job.kind, "messages": list(job.messages),
            "student_answer": job.student_answer, "student_tokens": tokens_json(job.student_tokens),
            "decision": {"route": decision.route, "reason": str(decision.reason), "score": _finite(decision.score),
                         "threshold": _finite(decision.threshold)},
            "student_model": job.student_model, "student_version": job.student_version, "max_tokens": job.max_tokens,
            "created_at": job.created_at.isoformat(), "constraint": job.constraint, "drift": job.drift,
            "sampling": job.sampling}


def from_payload(payload: dict) -> ShadowJob:
    decision = payload["decision"]
    return ShadowJob(
        request_id=payload["request_id"], kind=payload["kind"], messages=tuple(payload["messages"]),
        student_answer=payload["student_answer"],
        student_tokens=tokens_from_json(payload["student_tokens"]),
        decision=RouteDecision(decision["route"], decision["reason"], decision["score"], decision["threshold"]),
        student_model=payload["student_model"], student_version=payload.get("student_version"),
        max_tokens=payload["max_tokens"],
        created_at=datetime.fromisoformat(payload["created_at"]),
        constraint=payload.get("constraint"),  # jobs stored before records kept constraints have none
        drift=payload.get("drift", False), sampling=payload.get("sampling"))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
