"""The jobs table, on a SQLite file and on PostgreSQL alike: one job per trigger key, one ending per job, and jobs a
dead trainer left running found."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs


@pytest.fixture
def jobs(store_url) -> TrainJobs:
    store = ShadowStore(store_url)
    yield TrainJobs(store)
    store.close()


def test_a_trigger_key_makes_one_job(jobs):
    first, created = jobs.create("alert", {"n": 1}, key="alert:g|f|t")
    again, created_again = jobs.create("alert", {"n": 2}, key="alert:g|f|t")
    assert created and not created_again and again.id == first.id and again.options == {"n": 1}
    other, created_other = jobs.create("manual", {})
    assert created_other and other.id != first.id
    with pytest.raises(ValueError, match="trigger must be one of"):
        jobs.create("cron", {})


def test_one_alert_raced_from_two_trainers_makes_one_job_that_one_of_them_starts(jobs, store_url):
    """Two trainer replicas (two connection pools) receive the same alert group at once, four deliveries each:
    one job is created, every delivery names it, and of the two that try to start it exactly one does."""
    other_store = ShadowStore(store_url)
    other = TrainJobs(other_store)
    try:
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda store: store.create("alert", {}, key="alert:race"), [jobs, other] * 4))
            assert sum(created for _, created in made) == 1
            assert len({job.id for job, _ in made}) == 1
            job_id = made[0][0].id
            started = list(pool.map(lambda store: store.start(job_id), [jobs, other] * 2))
        assert sorted(started) == [False, False, False, True]
        assert jobs.get(job_id).state == "running" and jobs.counts()["queued"] == 0
    finally:
        other_store.close()


def test_a_job_runs_then_ends_once(jobs):
    job, _ = jobs.create("manual", {})
    assert jobs.active().id == job.id and jobs.start(job.id, "pid:1") and not jobs.start(job.id)
    jobs.progress(job.id, "train", 0.5, figures={"a": 1}, log_tail="x" * 10_000)
    running = jobs.get(job.id)
    assert (running.state, running.step, running.progress, running.figures) == ("running", "train", 0.5, {"a": 1})
    assert len(running.log_tail) == 4000
    assert jobs.finish(job.id, "cancelled", "by hand") and not jobs.finish(job.id, "failed", "later")
    ended = jobs.get(job.id)
    assert (ended.state, ended.reason) == ("cancelled", "by hand") and ended.finished and ended.finished_at
    assert jobs.counts()["cancelled"] == 1 and jobs.active() is None


@pytest.mark.parametrize(("requeue", "state", "reason"), [(False, "failed", "trainer restarted"),
                                                          (True, "queued", "trainer restarted; queued again")])
def test_a_job_left_running_is_found(jobs, requeue, state, reason):
    job, _ = jobs.create("manual", {})
    jobs.start(job.id)
    assert jobs.orphans(requeue) == [job.id]
    found = jobs.get(job.id)
    assert (found.state, found.reason) == (state, reason)
