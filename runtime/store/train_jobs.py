"""Re-distillation jobs in the record store: created once per trigger, run one at a time, never lost silently.

    queued ──▶ running ──▶ succeeded (a new student was promoted) | rejected (the gate said no) | skipped (too few
       │                    records) | failed (with its reason) | cancelled
       └──▶ cancelled

A trigger's key (an alert's `groupKey` + fingerprint + `startsAt`, a schedule's period) is unique: Alertmanager
retries a webhook it thinks failed, and the retry finds the job it already made. A job left `running` by a trainer
that died is found at the next start and marked failed (or queued again), with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runtime.store.records import ShadowStore
from runtime.store.schema import JOB_STATES, JOB_TRIGGERS, TrainJobRow

FINISHED = ("succeeded", "rejected", "skipped", "failed", "cancelled")
LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class TrainJob:
    id: int
    created_at: datetime
    changed_at: datetime
    state: str
    trigger: str
    trigger_key: str | None
    options: dict
    step: str | None
    progress: float
    figures: dict | None
    reason: str | None
    log_tail: str | None
    candidate: str | None
    runner_ref: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def public(self) -> dict:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        for name, value in values.items():
            if isinstance(value, datetime):
                values[name] = value.isoformat()
        return values


_COLUMNS = [item.name for item in fields(TrainJob)]


class TrainJobs:
    def __init__(self, store: ShadowStore):
        self.engine = store.engine

    def create(self, trigger: str, options: dict, key: str | None = None) -> tuple[TrainJob, bool]:
        """A queued job, or the existing one for `key`; (job, created?)."""
        if trigger not in JOB_TRIGGERS:
            raise ValueError(f"trigger must be one of {JOB_TRIGGERS}, got {trigger!r}")
        now = datetime.now(UTC)
        try:
            with Session(self.engine) as session, session.begin():
                row = TrainJobRow(created_at=now, changed_at=now, state="queued", trigger=trigger, trigger_key=key,
                                  options=options, progress=0.0)
                session.add(row)
                session.flush()
                job_id = row.id
        except IntegrityError:
            with Session(self.engine) as session:
                existing = session.scalar(select(TrainJobRow).where(TrainJobRow.trigger_key == key))
                return _job(existing), False
        return self.get(job_id), True

    def close_before_start(self, trigger: str, options: dict, key: str, reason: str) -> bool:
        """Record that the trigger `key` needs no job (a resolved alert): a skipped job under that key, unless one
        exists. True if it was recorded."""
        now = datetime.now(UTC)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(TrainJobRow(created_at=now, changed_at=now, finished_at=now, state="skipped",
                                        trigger=trigger, trigger_key=key, options=options, progress=0.0,
                                        reason=reason))
            return True
        except IntegrityError:
            return False

    def get(self, job_id: int) -> TrainJob | None:
        with Session(self.engine) as session:
            row = session.get(TrainJobRow, job_id)
            return _job(row) if row is not None else None

    def list(self, limit: int = 50) -> list[TrainJob]:
        with Session(self.engine) as session:
            rows = session.scalars(select(TrainJobRow).order_by(TrainJobRow.id.desc()).limit(limit))
            return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            rows = session.execute(select(TrainJobRow.state, func.count()).group_by(TrainJobRow.state)).all()
        return {state: 0 for state in JOB_STATES} | dict(rows)

    def active(self) -> TrainJob | None:
        """The running job, else the oldest queued one."""
        with Session(self.engine) as session:
            for state, order in (("running", TrainJobRow.id), ("queued", TrainJobRow.id)):
                row = session.scalar(select(TrainJobRow).where(TrainJobRow.state == state).order_by(order).limit(1))
                if row is not None:
                    return _job(row)
        return None

    def start(self, job_id: int, runner_ref: str | None = None) -> bool:
        """queued → running, only if it is still queued (a cancel may have come first)."""
        return self._set(job_id, {"state": "running", "started_at": datetime.now(UTC), "runner_ref": runner_ref},
                         only_if=("queued",))

    def progress(self, job_id: int, step: str, progress: float, figures: dict | None = None,
                 log_tail: str | None = None, candidate: str | None = None) -> None:
        values = {"step": step, "progress": progress}
        if figures is not None:
            values["figures"] = figures
        if log_tail is not None:
            values["log_tail"] = log_tail[-LOG_TAIL_CHARS:]
        if candidate is not None:
            values["candidate"] = candidate
        self._set(job_id, values, only_if=("running",))

    def finish(self, job_id: int, state: str, reason: str | None = None, figures: dict | None = None,
               log_tail: str | None = None) -> bool:
        """An end state, once: a job already finished (cancelled meanwhile) keeps its first ending."""
        if state not in FINISHED:
            raise ValueError(f"{state!r} is not an end state")
        values = {"state": state, "reason": reason, "finished_at": datetime.now(UTC)}
        if figures is not None:
            values["figures"] = figures
        if log_tail is not None:
            values["log_tail"] = log_tail[-LOG_TAIL_CHARS:]
        return self._set(job_id, values, only_if=("queued", "running"))

    def requeue(self, job_id: int, reason: str) -> bool:
        """A running job back in the queue (its runner stopped it to be run again), its steps cleared."""
        return self._set(job_id, {"state": "queued", "reason": reason, "step": None, "progress": 0.0},
                         only_if=("running",))

    def orphans(self, requeue: bool, keep: tuple[int, ...] = ()) -> list[int]:
        """Jobs left `running` by a trainer that is gone (but those in `keep`, which a runner found still running
        and follows again): failed with that reason, or queued again."""
        with Session(self.engine) as session, session.begin():
            ids = list(session.scalars(select(TrainJobRow.id).where(TrainJobRow.state == "running",
                                                                    TrainJobRow.id.not_in(keep))))
            values = ({"state": "queued", "reason": "trainer restarted; queued again", "step": None,
                       "progress": 0.0} if requeue else
                      {"state": "failed", "reason": "trainer restarted", "finished_at": datetime.now(UTC)})
            if ids:
                session.execute(update(TrainJobRow).where(TrainJobRow.id.in_(ids))
                                .values(changed_at=datetime.now(UTC), **values))
        return ids

    def _set(self, job_id: int, values: dict, only_if: tuple[str, ...]) -> bool:
        with Session(self.engine) as session, session.begin():
            moved = session.execute(update(TrainJobRow).where(TrainJobRow.id == job_id,
                                                              TrainJobRow.state.in_(only_if))
                                    .values(changed_at=datetime.now(UTC), **values)).rowcount
        return moved == 1


def _job(row: TrainJobRow) -> TrainJob:
    values = {name: getattr(row, name) for name in _COLUMNS}
    for name, value in values.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            values[name] = value.replace(tzinfo=UTC)
    return TrainJob(**values)
