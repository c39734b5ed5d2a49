"""The Kubernetes runner across a trainer restart: a TrainJob outlives the trainer pod, so the restarted trainer
follows it again rather than failing the job while its pods train on (holding GPUs, and still promoting at the
end), ends a job whose TrainJob ended while it was away, and clears a leftover TrainJob before submitting a job
queued again under the same name.

No Kubernetes API server can run here: `Cluster` keeps TrainJobs in a dict and answers as the API does (404 for a
missing object, 409 for a name in use), the calls `kubernetes.client.CustomObjectsApi` makes. The store is real."""

from __future__ import annotations

import pytest

from distill.online.kubernetes import KubernetesRunner, trainjob_name
from distill.online.settings import load_trainer_settings
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs


class ApiError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class Cluster:
    """TrainJobs by name, with the API's answers; `conditions` sets a TrainJob's status as its controller would."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.created: list[str] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        name = body["metadata"]["name"]
        if name in self.objects:
            raise ApiError(409)
        self.objects[name] = body | {"status": {}}
        self.created.append(name)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.objects:
            raise ApiError(404)
        return self.objects[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.objects.pop(name, None) is None:
            raise ApiError(404)

    def conditions(self, job_id: int, kind: str, message: str = "") -> None:
        self.objects[trainjob_name(job_id)]["status"] = {"conditions": [{"type": kind, "status": "True",
                                                                           "message": message}]}


@pytest.fixture
def jobs(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield TrainJobs(store)
    store.close()


def submitted(jobs: TrainJobs, cluster: Cluster, settings) -> int:
    """A job queued and submitted by a first trainer, which then goes away."""
    job, _ = jobs.create("alert", {})
    first = KubernetesRunner(settings, jobs, api=cluster)
    first._submit(job.id)
    assert jobs.get(job.id).state == "running" and trainjob_name(job.id) in cluster.objects
    return job.id


def test_a_restarted_trainer_follows_a_trainjob_that_still_runs(jobs):
    settings, cluster = load_trainer_settings(None, runner="kubernetes"), Cluster()
    job_id = submitted(jobs, cluster, settings)
    second = KubernetesRunner(settings, jobs, api=cluster)
    assert second.adopt() == [job_id]
    assert jobs.orphans(requeue=False, keep=(job_id,)) == []  # not failed as `trainer restarted`
    assert second.running == job_id and jobs.get(job_id).state == "running"
    cluster.conditions(job_id, "Failed", "node lost")
    second._watch(job_id)
    assert (jobs.get(job_id).state, jobs.get(job_id).reason) == ("failed",
                                                                  f"TrainJob {trainjob_name(job_id)} failed: node lost")


@pytest.mark.parametrize(("condition", "words"), [("Failed", "failed"), ("Complete", "completed")])
def test_a_trainjob_that_ended_while_the_trainer_was_away_ends_its_job(jobs, condition, words):
    settings, cluster = load_trainer_settings(None, runner="kubernetes"), Cluster()
    job_id = submitted(jobs, cluster, settings)
    cluster.conditions(job_id, condition)
    second = KubernetesRunner(settings, jobs, api=cluster)
    assert second.adopt() == [job_id] and second.running is None
    job = jobs.get(job_id)
    assert job.state == "failed" and f"{words} while the trainer was away" in job.reason


def test_a_gone_trainjob_is_left_to_the_orphan_rule_and_its_name_cleared_before_the_rerun(jobs):
    """Requeued (`requeue_on_restart`), the job runs again under the same TrainJob name: a leftover TrainJob of
    that name (a controller slow to delete, a manual copy) is deleted first, then the job is submitted."""
    settings, cluster = load_trainer_settings(None, runner="kubernetes", requeue_on_restart=True), Cluster()
    job_id = submitted(jobs, cluster, settings)
    left_over = cluster.objects.pop(trainjob_name(job_id))
    second = KubernetesRunner(settings, jobs, api=cluster)
    assert second.adopt() == []
    assert jobs.orphans(requeue=True) == [job_id] and jobs.get(job_id).state == "queued"
    cluster.objects[trainjob_name(job_id)] = left_over  # it shows up again, from the earlier run
    second._submit(job_id)
    assert trainjob_name(job_id) not in cluster.objects and jobs.get(job_id).state == "queued"
    second._submit(job_id)
    assert cluster.created == [trainjob_name(job_id)] * 2 and jobs.get(job_id).state == "running"
