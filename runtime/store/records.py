"""The record store: SQLAlchemy 2 over a SQLite file (WAL) by default, PostgreSQL by URL; Alembic migrations.

It holds shadow and escalation records (this module), the durable shadow jobs (`gateway.shadow.jobs`) and the
student versions (`runtime.store.versions`), one database for all.

Synchronous on purpose: the shadow worker calls it in a thread, off the request path, one record at a time, so
the store needs no async driver. Retention (max age, max rows) is applied after writes, in batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, delete, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from router.records import floor
from runtime.contract import TokenLogprob, TopLogprob
from runtime.store.schema import KINDS, ShadowRow
from runtime.store.sqlite_file import FileWatch

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6B64676174650001  # a PostgreSQL advisory lock key of kdgate's own ("kdgate", 1)


class RecordRejected(ValueError):
    """A record the store refuses (too large, malformed); the worker logs the reason and counts it."""


@dataclass(frozen=True)
class ShadowRecord:
    request_id: str
    created_at: datetime
    kind: str
    student_model: str
    teacher_model: str
    route: str
    route_reason: str
    prompt: list
    student_answer: str
    student_tokens: list
    student_version: str | None = None
    adapter_version: str | None = None
    teacher_version: str | None = None
    token_ids: bool = False  # every student token carries its token id (records from before 0003 do not)
    confidence: float | None = None
    threshold: float | None = None
    teacher_scores: list | None = None
    teacher_answer: str | None = None
    teacher_tokens: list | None = None
    aligned: bool | None = None
    mean_kl: float | None = None
    top1_agreement: float | None = None
    teacher_nll: float | None = None
    answers_agree: bool | None = None
    field_agreement: float | None = None
    sample_rate: float | None = None  # the chance it was kept: shadow.sample_rate, or 1 for an escalation
    constraint: dict | None = None  # the client's constraint, vLLM's `structured_outputs` shape; None: free text
    constraint_masked: bool | None = None  # figures from the teacher's scores held to `constraint` (schema.py)
    drift_sample: bool | None = None  # drawn for the uniform drift sample before routing (schema.py)
    drift_answer: str | None = None  # an escalation's: the student's whole answer, asked for off the request path
    drift_tokens: list | None = None

    def weight(self) -> float:
        """How many requests of the traffic this record stands for (1 / the chance it was kept)."""
        return 1.0 / self.sample_rate if self.sample_rate else 1.0


_FIELDS = [item.name for item in fields(ShadowRecord)]


class ShadowStore:
    def __init__(self, url: str, max_age: timedelta | None = None, max_rows: int | None = None,
                 max_record_bytes: int = 1_000_000):
        self.url = url
        self.max_age, self.max_rows, self.max_record_bytes = max_age, max_rows, max_record_bytes
        self.engine = _engine(url)
        self.upgrade()
        path = sqlite_path(url)
        self.file = FileWatch(path) if path is not None else None

    def keep_file(self) -> str | None:
        """A SQLite store whose file was deleted or replaced while open is put back at its path, with everything
        written so far (runtime.store.sqlite_file); returns what had happened, None when the file is in place (or
        the store is not a file)."""
        if self.file is None or not self.file.moved():
            return None
        found = self.file.restore()
        self.engine.dispose()  # pooled connections still write into the old inode: new ones open the restored file
        return found

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there already)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # gateways and the trainer starting at once on an empty database raced on creating the tables and
                # on `alembic_version`: one at a time, the lock held until this transaction ends
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def write(self, record: ShadowRecord) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(record_row(self, record))

    def prune(self, now: datetime | None = None) -> int:
        """Delete records past the retention limits; returns how many went."""
        removed = 0
        with Session(self.engine) as session, session.begin():
            if self.max_age is not None:
                cutoff = self._db_time((now or datetime.now(UTC)) - self.max_age)
                removed += session.execute(delete(ShadowRow).where(ShadowRow.created_at < cutoff)).rowcount or 0
            if self.max_rows is not None:
                keep_from = session.scalar(select(ShadowRow.id).order_by(ShadowRow.id.desc())
                                           .offset(self.max_rows - 1).limit(1))
                if keep_from is not None:
                    removed += session.execute(delete(ShadowRow).where(ShadowRow.id < keep_from)).rowcount or 0
        return removed

    def count(self, kind: str | None = None) -> int:
        with Session(self.engine) as session:
            query = select(func.count()).select_from(ShadowRow)
            if kind is not None:
                query = query.where(ShadowRow.kind == kind)
            return session.scalar(query) or 0

    def iter_records(self, since: datetime | None = None, kind: str | None = None, batch: int = 500
                     ) -> Iterator[ShadowRecord]:
        """Records oldest first, streamed in batches (the trainer's read API)."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        last_id = 0
        while True:
            query = select(ShadowRow).where(ShadowRow.id > last_id).order_by(ShadowRow.id).limit(batch)
            if since is not None:
                query = query.where(ShadowRow.created_at >= self._db_time(since))
            if kind is not None:
                query = query.where(ShadowRow.kind == kind)
            with Session(self.engine) as session:
                rows = session.scalars(query).all()
                records = [_record(row) for row in rows]
            if not rows:
                return
            last_id = rows[-1].id
            yield from records

    def close(self) -> None:
        self.engine.dispose()
        if self.file is not None:
            self.file.close()

    def _db_time(self, moment: datetime) -> datetime:
        """Aware UTC for PostgreSQL; naive UTC for SQLite, which stores no time zone (and compares as text)."""
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.replace(tzinfo=None) if self.engine.dialect.name == "sqlite" else moment


def tokens_json(tokens: Sequence[TokenLogprob] | None) -> list:
    """Tokens as stored: `{"token", "id", "logprob", "top": [[token, logprob, id], ...]}` (ids null when the backend
    gave none; the logprob floor for -inf)."""
    return [{"token": entry.token, "id": entry.token_id, "logprob": floor(entry.logprob),
             "top": [[top.token, floor(top.logprob), top.token_id] for top in entry.top_logprobs]}
            for entry in tokens or ()]


def tokens_from_json(entries: Sequence[dict]) -> tuple[TokenLogprob, ...]:
    """The stored form back (records from before migration 0003: no `id`, `top` pairs without one)."""
    return tuple(TokenLogprob(entry["token"], entry["logprob"],
                              tuple(TopLogprob(top[0], top[1], top[2] if len(top) > 2 else None)
                                    for top in entry["top"]), entry.get("id")) for entry in entries)


def has_token_ids(tokens: Sequence[TokenLogprob]) -> bool:
    return bool(tokens) and all(entry.token_id is not None for entry in tokens)


def record_row(store: ShadowStore, record: ShadowRecord) -> ShadowRow:
    """The row for a record, after the checks every stored record passes (`RecordRejected` names the problem)."""
    if record.kind not in KINDS:
        raise RecordRejected(f"kind must be one of {KINDS}, got {record.kind!r}")
    try:
        size = len(json.dumps([record.prompt, record.student_tokens, record.teacher_scores, record.teacher_tokens,
                               record.student_answer, record.teacher_answer, record.constraint, record.drift_answer,
                               record.drift_tokens], allow_nan=False))
    except (TypeError, ValueError) as error:  # NaN, infinities, objects JSON cannot hold
        raise RecordRejected(f"record {record.request_id} is not storable as JSON: {error}") from None
    if size > store.max_record_bytes:
        raise RecordRejected(f"record {record.request_id} is {size} bytes, above the {store.max_record_bytes} "
                             "byte limit (`shadow.max_record_bytes`)")
    return ShadowRow(**(asdict(record) | {"created_at": store._db_time(record.created_at)}))


def _record(row: ShadowRow) -> ShadowRecord:
    values = {name: getattr(row, name) for name in _FIELDS}
    if values["created_at"].tzinfo is None:
        values["created_at"] = values["created_at"].replace(tzinfo=UTC)
    return ShadowRecord(**values)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL; None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" and not path.startswith("file:") else None


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(connection, _record) -> None:  # WAL: readers (export, trainer) never block the writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
