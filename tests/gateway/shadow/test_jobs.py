"""The durable job queue on a real SQLite file and a real PostgreSQL: jobs round-trip, claims never overlap, a
lease that expires frees a job, completing writes the record and deletes the job together."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from gateway.shadow.jobs import RETRY_FIRST_S, RETRY_MAX_S, JobQueue, ShadowJob, retry_delay_s, to_payload, within_room
from router.policy import RouteDecision
from runtime.contract import TokenLogprob, TopLogprob
from runtime.store.records import ShadowStore
from runtime.store.schema import JobRow
from tests.runtime.store.older import store_at
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
    yield JobQueue(store, retry_for_s=600)
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


def test_a_jobs_constraint_round_trips_and_a_job_stored_before_constraints_has_none(jobs):
    spec = {"json": {"type": "object", "properties": {"queue": {"enum": ["billing"]}}}, "disable_any_whitespace": True}
    jobs.enqueue([replace(job("constrained"), constraint=spec)])
    old = to_payload(job("old"))
    del old["constraint"]
    with Session(jobs.store.engine) as session, session.begin():
        session.add(JobRow(request_id="old", created_at=jobs.store._db_time(datetime.now(UTC)), payload=old,
                           attempts=0))
    claimed = {item.job.request_id: item.job for item in jobs.claim(2, lease_s=60)}
    assert claimed["constrained"].constraint == spec and claimed["old"].constraint is None


def test_claims_do_not_overlap_and_an_expired_lease_frees_the_job(jobs):
    jobs.enqueue([job(f"j{index}") for index in range(5)])
    first = jobs.claim(3, lease_s=60)
    second = jobs.claim(3, lease_s=60)
    assert [c.job.request_id for c in first] == ["j0", "j1", "j2"]
    assert [c.job.request_id for c in second] == ["j3", "j4"]
    assert jobs.claim(3, lease_s=60) == []
    later = datetime.now(UTC) + timedelta(seconds=120)  # every lease has run out: a crashed worker's jobs return
    assert len(jobs.claim(10, lease_s=60, now=later)) == 5


def test_the_drift_samples_jobs_are_claimed_before_a_backlog_of_others(jobs):
    """The drift alert and the canary read only the drift sample: behind a backlog of recorded escalations (a
    teacher serving most of a drifted traffic answers each again for its top-k) a newly promoted version can go
    unmeasured. Its jobs are taken first, oldest first within each kind, and the others still come after."""
    escalation = replace(job("e"), kind="escalation", student_answer="", student_tokens=())
    jobs.enqueue([replace(escalation, request_id=f"e{index}") for index in range(3)])
    jobs.enqueue([replace(job(f"d{index}"), drift=True) for index in range(2)])
    jobs.enqueue([replace(escalation, request_id="e3")])
    first = jobs.claim(3, lease_s=60)
    assert [c.job.request_id for c in first] == ["d0", "d1", "e0"] and [c.job.drift for c in first[:2]] == [True] * 2
    assert [c.job.request_id for c in jobs.claim(10, lease_s=60)] == ["e1", "e2", "e3"]


def test_a_full_backlog_of_others_leaves_the_drift_sample_its_own_room(jobs):
    """Each class has `shadow.queue_size` places: a store full of recorded escalations still takes the drift
    sample's new jobs (one bound for both dropped them: the drift alert then read a thinning sample), and the
    drift sample's own bound holds."""
    jobs.enqueue([job("e0"), job("e1"), replace(job("d0"), drift=True)])
    assert jobs.backlog() == {True: 1, False: 2}
    batch = [job("e2"), *(replace(job(f"d{index}"), drift=True) for index in (1, 2, 3))]
    assert [item.request_id for item in within_room(batch, jobs.backlog(), size=2)] == ["d1"]
    assert [item.request_id for item in within_room(batch, jobs.backlog(), size=3)] == ["e2", "d1", "d2"]


def test_a_job_queued_before_the_drift_mark_is_claimed_after_the_upgrade(store_url):
    """A 0008 store (SQLite file or PostgreSQL) holding a job, as a gateway stopped with a backlog leaves it: opening
    it migrates to 0009 and the job is taken as an ordinary one, after a drift-sample job stored since."""
    with store_at(store_url, "0008") as connection:
        connection.execute(text("INSERT INTO shadow_jobs (request_id, created_at, payload, attempts) VALUES "
                                "(:id, :at, :payload, 0)"),
                           {"id": "queued-before", "at": datetime(2026, 12, 1, 10, tzinfo=UTC),
                            "payload": json.dumps(to_payload(replace(job("queued-before"), drift=True)))})
    store = ShadowStore(store_url)
    try:
        queue = JobQueue(store)
        queue.enqueue([replace(job("drift-after"), drift=True)])
        assert [(c.job.request_id, c.job.drift) for c in queue.claim(2, lease_s=60)] == \
            [("drift-after", True), ("queued-before", True)]  # its payload still says so; its row does not
    finally:
        store.close()


def test_complete_writes_the_record_and_deletes_the_job(jobs):
    jobs.enqueue([job("a")])
    (claimed,) = jobs.claim(1, lease_s=60)
    assert jobs.complete(claimed, record("a", datetime.now(UTC)))
    assert jobs.pending() == 0 and jobs.request_ids() == {"a"}
    jobs.enqueue([job("a")])  # the same request again (a retry after a crash): the record is not written twice
    (again,) = jobs.claim(1, lease_s=60)
    assert not jobs.complete(again, record("a", datetime.now(UTC)))
    assert jobs.pending() == 0 and jobs.store.count() == 1


def test_a_failed_job_waits_out_its_backoff_then_is_retried_until_it_is_too_old(jobs):
    jobs.enqueue([job("a")])
    now = datetime.now(UTC)
    (claimed,) = jobs.claim(1, lease_s=60, now=now)
    assert jobs.release(claimed, now=now)  # tried once: back in the queue, but not at once
    assert jobs.claim(1, lease_s=60, now=now) == []
    (again,) = jobs.claim(1, lease_s=60, now=now + timedelta(seconds=RETRY_FIRST_S + 0.01))
    assert again.attempts == 1
    for attempts in range(2, 12):  # a teacher down for many minutes: the job keeps coming back, less often
        assert jobs.release(again, now=now)
        assert jobs.claim(1, lease_s=60, now=now + timedelta(seconds=retry_delay_s(attempts - 1) * 0.49)) == []
        (again,) = jobs.claim(1, lease_s=60, now=now + timedelta(seconds=RETRY_MAX_S + 0.01))
        assert again.attempts == attempts
    assert not jobs.release(again, now=again.job.created_at + timedelta(seconds=600))  # retry_for_s=600: gone
    assert jobs.pending() == 0


def test_the_backoff_doubles_from_one_second_to_a_minute_with_jitter():
    rng = random.Random(0)
    for attempts, full in [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60)]:
        delays = [retry_delay_s(attempts, rng) for _ in range(200)]
        assert full * 0.5 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full * 0.3  # jittered: jobs failed together come back spread out
