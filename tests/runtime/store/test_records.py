"""The shadow store on a real SQLite file (WAL) and a real PostgreSQL: migrations (over a store written before
them, too), writes, reads, retention, the constraint a record keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text

from runtime.store.records import RecordRejected, ShadowRecord, ShadowStore
from tests.runtime.store.older import store_at


def record(request_id: str, created_at: datetime, kind: str = "shadow", **extra) -> ShadowRecord:
    return ShadowRecord(request_id=request_id, created_at=created_at, kind=kind, student_model="s",
                        teacher_model="t", route="student", route_reason="policy:student_only",
                        prompt=[{"role": "user", "content": "hi"}], student_answer="ok",
                        student_tokens=[{"token": "ok", "logprob": -0.1, "top": [["ok", -0.1]]}], **extra)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/shadow.sqlite3" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    opened = ShadowStore(url, max_rows=1000)
    yield opened
    with opened.engine.begin() as connection:
        connection.execute(text("DELETE FROM shadow_records"))
    opened.close()


def test_records_round_trip_and_filter(store):
    now = datetime.now(UTC).replace(microsecond=0)
    store.write(record("a", now - timedelta(hours=2), mean_kl=0.25, answers_agree=True))
    store.write(record("b", now - timedelta(minutes=5), kind="escalation", teacher_answer="better"))
    store.write(record("c", now))
    everything = list(store.iter_records())
    assert [item.request_id for item in everything] == ["a", "b", "c"]
    assert everything[0].created_at == now - timedelta(hours=2) and everything[0].mean_kl == 0.25
    assert [item.request_id for item in store.iter_records(kind="escalation")] == ["b"]
    assert [item.request_id for item in store.iter_records(since=now - timedelta(hours=1))] == ["b", "c"]
    assert [item.request_id for item in store.iter_records(batch=1)] == ["a", "b", "c"]


def test_retention_by_age_and_by_rows(store):
    now = datetime.now(UTC)
    for index in range(6):
        store.write(record(str(index), now - timedelta(days=10 - index)))
    store.max_age, store.max_rows = timedelta(days=7), 2
    assert store.prune(now) == 4  # 3 too old, then one more beyond the newest 2
    assert [item.request_id for item in store.iter_records()] == ["4", "5"]


def test_bad_records_are_rejected_with_the_reason(store):
    with pytest.raises(RecordRejected, match="byte limit"):
        store.write(record("big", datetime.now(UTC), teacher_answer="x" * 2_000_000))
    with pytest.raises(RecordRejected, match="kind"):
        store.write(record("odd", datetime.now(UTC), kind="other"))
    with pytest.raises(RecordRejected, match="not storable as JSON"):
        store.write(record("nan", datetime.now(UTC), teacher_tokens=[{"token": "x", "logprob": float("nan")}]))
    assert store.count() == 0


def test_migrations_are_idempotent_and_sqlite_uses_wal(tmp_path):
    url = f"sqlite:///{tmp_path}/s.sqlite3"
    first = ShadowStore(url)
    first.upgrade()  # again: a no-op
    with first.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0009"
    assert "shadow_records" in inspect(first.engine).get_table_names()
    first.close()
    ShadowStore(url).close()  # reopening an existing store works


JSON_CONSTRAINT = {"json": {"type": "object", "properties": {"queue": {"enum": ["billing", "repairs"]}},
                            "required": ["queue"]}, "disable_any_whitespace": True}


def test_a_record_keeps_the_constraint_its_answer_was_generated_under(store):
    now = datetime.now(UTC)
    store.write(record("constrained", now, constraint=JSON_CONSTRAINT, constraint_masked=True))
    store.write(record("grammar", now, constraint={"grammar": 'root ::= "ok"'}, constraint_masked=False))
    store.write(record("free", now))
    read = {item.request_id: item for item in store.iter_records()}
    assert (read["constrained"].constraint, read["constrained"].constraint_masked) == (JSON_CONSTRAINT, True)
    assert (read["grammar"].constraint, read["grammar"].constraint_masked) == ({"grammar": 'root ::= "ok"'}, False)
    assert (read["free"].constraint, read["free"].constraint_masked) == (None, None)


def test_a_store_from_before_constraints_upgrades_in_place(store_url):
    """A 0006 store (SQLite file or PostgreSQL) with a record in it: opening it migrates to the newest (0009), the old
    record reads back with no constraint and unmarked for the drift sample, and a constrained record can be written
    beside it."""
    with store_at(store_url, "0006") as connection:
        connection.execute(text(
            "INSERT INTO shadow_records (request_id, created_at, kind, student_model, teacher_model, route, "
            "route_reason, prompt, student_answer, student_tokens, token_ids, sample_rate) VALUES ('old-1', "
            "'2026-12-01 10:00:00', 'shadow', 's', 't', 'student', 'policy:student_only', '[]', 'ok', "
            "'[{\"token\": \"ok\", \"id\": 7, \"logprob\": -0.1, \"top\": [[\"ok\", -0.1, 7]]}]', true, 0.5)"))
    store = ShadowStore(store_url)
    try:
        with store.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0009"
        store.write(record("new-1", datetime.now(UTC), constraint=JSON_CONSTRAINT, constraint_masked=True))
        old, new = list(store.iter_records())
        assert old.request_id == "old-1" and old.sample_rate == 0.5 and old.constraint is None
        assert old.constraint_masked is None and old.drift_sample is None and old.drift_answer is None
        assert new.constraint == JSON_CONSTRAINT and new.constraint_masked is True
    finally:
        store.close()
