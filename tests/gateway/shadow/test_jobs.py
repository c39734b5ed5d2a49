"""The durable job queue on a real SQLite file and a real PostgreSQL: jobs round-trip, claims never overlap, a
lease that expires frees a job, completing writes the record and deletes the job together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from gateway.shadow.jobs import JobQueue, ShadowJob
from router.policy import RouteDecision
from runtime.contract import TokenLogprob, TopLogprob
from runtime.store.records import ShadowStore
from tests.runtime.store.test_records import record


def job(request_id: str) -> ShadowJob:
    tokens = (TokenLogprob("ok", -0.1, (TopLogprob("ok", -0.1, 7), TopLogprob("no", float("-inf"), 8)), 7),)
    return ShadowJob(request_id=request_id, kind="shadow", messages=({"role": "user", "content": "hi"},),
                     student_answer="ok", student_tokens=tokens,
                     decision=RouteDecision("student", "policy:student_only", score=float("nan")),
                     student_model="s", max_tokens=16, created_at=datetime.now(UTC))


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs(request, tmp_path):
    url = f"sqlite:///{tmp_path}/shadow.sqlite3" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    store = ShadowStore(url)
    yield JobQueue(store, max_attempts=2)
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM shadow_jobs"))
        connection.execute(text("DELETE FROM shadow_records"))
    store.close()


def test_a_job_round_trips_through_its_row(jobs):
    assert jobs.enqueue([job("a")]) == 1
    assert jobs.enqueue([job("a"), job("b")]) == 1  # the duplicate is skipped, the new one kept
    (claimed,) = jobs.claim(1, lease_s=60)
    assert claimed.job.request_id == "a" and claimed.job.student_tokens[0].top_logprobs[1].logprob == -9999.0
    assert claimed.job.student_tokens[0].top_logprobs[0].token_id == 7
    assert claimed.job.decision.score is None  # NaN is not stored


def test_claims_do_not_overlap_and_an_expired_lease_frees_the_job(jobs):
    jobs.enqueue([job(f"j{index}") for index in range(5)])
    first = jobs.claim(3, lease_s=60)
    second = jobs.claim(3, lease_s=60)
    assert [c.job.request_id for c in first] == ["j0", "j1", "j2"]
    assert [c.job.request_id for c in second] == ["j3", "j4"]
    assert jobs.claim(3, lease_s=60) == []
    later = datetime.now(UTC) + timedelta(seconds=120)  # every lease has run out: a crashed worker's jobs return
    assert len(jobs.claim(10, lease_s=60, now=later)) == 5


def test_complete_writes_the_record_and_deletes_the_job(jobs):
    jobs.enqueue([job("a")])
    (claimed,) = jobs.claim(1, lease_s=60)
    assert jobs.complete(claimed, record("a", datetime.now(UTC)))
    assert jobs.pending() == 0 and jobs.request_ids() == {"a"}
    jobs.enqueue([job("a")])  # the same request again (a retry after a crash): the record is not written twice
    (again,) = jobs.claim(1, lease_s=60)
    assert not jobs.complete(again, record("a", datetime.now(UTC)))
    assert jobs.pending() == 0 and jobs.store.count() == 1


def test_a_failed_job_is_retried_then_dropped(jobs):
    jobs.enqueue([job("a")])
    (claimed,) = jobs.claim(1, lease_s=60)
    assert jobs.release(claimed)  # tried once: back in the queue
    (again,) = jobs.claim(1, lease_s=60)
    assert again.attempts == 1
    assert not jobs.release(again)  # max_attempts=2: gone
    assert jobs.pending() == 0
