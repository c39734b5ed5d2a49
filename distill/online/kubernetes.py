"""The Kubernetes runner: each job is a Kubeflow Trainer v2 `TrainJob` running the same entrypoint,
`kdgate trainer run-job <id>`, on as many nodes and GPUs as the settings ask (torchrun/accelerate inside it).

The TrainJob carries every setting the job reads as `KDGATE_TRAINER_*` environment variables (`job_environment`:
all but the service's own), secrets by reference (the store URL and the gateway's admin key from a Secret, never
in the manifest), and a runtime patch giving its pods the volumes the trainer pod has (`kubernetes.volumes` and
`volume_mounts`, which the chart fills): the stock runtimes (`kubernetes.runtime_ref`, a ClusterTrainingRuntime)
mount nothing, and the job needs the shared work volume (whence the student servers read promoted adapters) and
the served student's weights. The runner creates the TrainJob and follows its status conditions (`Complete`,
`Failed`); the job itself writes its steps and ending to the store, as it does locally.
`tests/distill/online/test_kubernetes.py` validates the manifest against the TrainJob CRD's schema
(`deploy/kubernetes/crds/`) and loads the job's settings back from its environment; tests/deploy/test_chart_loop.py
runs the entrypoint with the environment and mounts a rendered chart gives it, to a promoted version. No cluster
is reached from here.
"""

from __future__ import annotations

import asyncio
import json
import logging

from distill.online.settings import TrainerSettings
from runtime.store.train_jobs import TrainJobs

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def trainjob_name(job_id: int) -> str:
    return f"kdgate-redistill-{job_id}"


def trainjob_manifest(job_id: int, settings: TrainerSettings) -> dict:
    k8s = settings.kubernetes
    spec = {
        "runtimeRef": {"name": k8s.runtime_ref, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
        "activeDeadlineSeconds": int(settings.job_timeout_s),
        "trainer": {"image": k8s.image, "command": ["kdgate", "trainer", "run-job", str(job_id)],
                    "numNodes": k8s.num_nodes, "numProcPerNode": k8s.num_proc_per_node,
                    "resourcesPerNode": {"limits": dict(k8s.resources_per_node),
                                         "requests": dict(k8s.resources_per_node)},
                    "env": job_environment(settings)}}
    if k8s.volumes or k8s.volume_mounts:
        spec["runtimePatches"] = [volume_patch(k8s)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
        "metadata": {"name": trainjob_name(job_id), "namespace": k8s.namespace,
                     "labels": {"app.kubernetes.io/name": "kdgate", "app.kubernetes.io/component": "redistill",
                                "kdgate.dev/job": str(job_id)}},
        "spec": spec}


# What the service alone reads (its address, tokens, alert selector, schedules, runner): left out of a job's pod.
SERVICE_ONLY = frozenset({"host", "port", "auth", "selector", "runner", "poll_interval_s", "max_body_bytes",
                          "schedule_interval_s", "teacher_change", "requeue_on_restart", "kubernetes"})


def job_environment(settings: TrainerSettings) -> list[dict]:
    """Every setting a job reads, as the `KDGATE_TRAINER_*` variables the entrypoint loads (nested ones as JSON);
    the store URL and the gateway's admin key by reference to their Secret, never in the manifest."""
    secret = settings.kubernetes.store_secret
    env = [{"name": "KDGATE_TRAINER_STORE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "url"}}}]
    dumped = settings.model_dump(mode="json", exclude={"store_url": True, "gateway": {"admin_key"}})
    for name, value in dumped.items():
        if name not in SERVICE_ONLY:
            env.append({"name": f"KDGATE_TRAINER_{name.upper()}", "value": _env_value(value)})
    if settings.gateway.admin_key is not None:
        env.append({"name": "KDGATE_TRAINER_GATEWAY__ADMIN_KEY",
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": "gateway-admin-key"}}})
    return env


def volume_patch(k8s) -> dict:
    """A runtime patch giving the trainer's replicated job the volumes and its container the mounts: the stock
    runtimes mount nothing the job needs."""
    pod = {"volumes": k8s.volumes, "containers": [{"name": k8s.runtime_job, "volumeMounts": k8s.volume_mounts}]}
    return {"manager": "kdgate.dev/trainer", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": k8s.runtime_job, "template": {"spec": {"template": {"spec": pod}}}}]}}}}


def _env_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class KubernetesRunner:
    """Submits queued jobs as TrainJobs, one at a time, and ends a job whose TrainJob failed without ending it. A
    TrainJob outlives the trainer pod: a restarted trainer follows it again (`adopt`) instead of failing the job
    while its pods keep training, holding GPUs, and would still promote."""

    def __init__(self, settings: TrainerSettings, jobs: TrainJobs, api=None):
        if api is None:
            from kubernetes import client, config  # the `kubernetes` extra

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        self.api = api
        self.settings, self.jobs = settings, jobs
        self.running: int | None = None

    def adopt(self) -> list[int]:
        """At start: each job the store has `running` on a TrainJob is followed again while its TrainJob runs, and
        ended when its TrainJob has ended without ending it; one whose TrainJob is gone is left to the orphan rule
        (`requeue_on_restart`). Returns the jobs followed or ended here."""
        handled = []
        for job in self.jobs.list(1000):
            if job.state != "running" or not (job.runner_ref or "").startswith("trainjob:"):
                continue
            found = self._get(job.id)
            if found is None:
                continue
            handled.append(job.id)
            ended = _ended(found)
            if ended is None:
                self.running = job.id
                log.info("job %d: following TrainJob %s again", job.id, trainjob_name(job.id))
            else:
                self.jobs.finish(job.id, "failed", f"TrainJob {trainjob_name(job.id)} {ended} while the trainer was "
                                                   "away, without ending the job")
        return handled

    async def tick(self) -> None:
        if self.running is not None:
            await asyncio.to_thread(self._watch, self.running)
            return
        job = await asyncio.to_thread(self.jobs.active)
        if job is not None and job.state == "queued":
            await asyncio.to_thread(self._submit, job.id)

    async def cancel(self, job_id: int) -> bool:
        if self.running == job_id:
            await asyncio.to_thread(self._delete, job_id)
            self.running = None
        return await asyncio.to_thread(self.jobs.finish, job_id, "cancelled", "cancelled by request")

    async def aclose(self) -> None:
        """TrainJobs keep running without the service; the next service follows them again (`adopt`)."""

    def _submit(self, job_id: int) -> None:
        if self._get(job_id) is not None:  # an earlier run of this job (queued again): its TrainJob goes first
            log.warning("job %d: TrainJob %s is left from an earlier run; deleting it before submitting again",
                        job_id, trainjob_name(job_id))
            self._delete(job_id)
            return  # the next tick submits, once the name is free
        manifest = trainjob_manifest(job_id, self.settings)
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.settings.kubernetes.namespace, PLURAL,
                                                 manifest)
        self.jobs.start(job_id, runner_ref=f"trainjob:{trainjob_name(job_id)}")
        self.running = job_id
        log.info("job %d submitted as TrainJob %s", job_id, trainjob_name(job_id))

    def _watch(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.finished:  # the entrypoint ended it
            self.running = None
            return
        found = self._get(job_id)
        if found is None:
            self.jobs.finish(job_id, "failed", f"TrainJob {trainjob_name(job_id)} is gone (deleted by someone?)")
            self.running = None
            return
        ended = _ended(found)
        if ended == "failed":
            message = next(item.get("message", "no message") for item in found["status"]["conditions"]
                           if item["type"] == "Failed")
            self.jobs.finish(job_id, "failed", f"TrainJob {trainjob_name(job_id)} failed: {message}")
        elif ended == "completed" and not self.jobs.get(job_id).finished:  # its container ended without a word
            self.jobs.finish(job_id, "failed", f"TrainJob {trainjob_name(job_id)} completed without ending the job")
        if ended is not None:
            self.running = None

    def _get(self, job_id: int) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.settings.kubernetes.namespace, PLURAL,
                                                         trainjob_name(job_id))
        except Exception as error:  # the client's ApiException; 404: there is none
            if getattr(error, "status", None) == 404:
                return None
            raise

    def _delete(self, job_id: int) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.settings.kubernetes.namespace, PLURAL,
                                                 trainjob_name(job_id))


def _ended(trainjob: dict) -> str | None:
    """'failed' or 'completed' from a TrainJob's true conditions; None while it runs."""
    conditions = {item["type"] for item in (trainjob.get("status") or {}).get("conditions", [])
                  if item.get("status") == "True"}
    return "failed" if "Failed" in conditions else "completed" if "Complete" in conditions else None
