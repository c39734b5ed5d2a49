"""The Kubernetes runner: each job is a Kubeflow Trainer v2 `TrainJob` running the same entrypoint,
`kdgate trainer run-job <id>`, on as many nodes and GPUs as the settings ask (torchrun/accelerate inside it).

The TrainJob carries the job's settings as `KDGATE_TRAINER_*` environment variables, secrets by reference (the
store URL and the gateway's admin key from Secrets, never in the manifest); the runtime it names
(`kubernetes.runtime_ref`, a ClusterTrainingRuntime) mounts the shared volume that holds `work_dir`, which the
student servers read the promoted weights from. The runner creates the TrainJob and follows its status
conditions (`Complete`, `Failed`); the job itself writes its steps and ending to the store, as it does locally.
`tests/distill/online/test_kubernetes.py` validates the manifest against the TrainJob CRD's schema
(`deploy/kubernetes/crds/`) and runs the same entrypoint as a local subprocess; no cluster is reached from here.
"""

from __future__ import annotations

import asyncio
import logging

from distill.online.settings import TrainerSettings
from runtime.store.train_jobs import TrainJobs

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def trainjob_name(job_id: int) -> str:
    return f"kdgate-redistill-{job_id}"


def trainjob_manifest(job_id: int, settings: TrainerSettings) -> dict:
    k8s = settings.kubernetes
    env = [{"name": "KDGATE_TRAINER_STORE_URL", "valueFrom": {"secretKeyRef": {"name": k8s.store_secret,
                                                                                "key": "url"}}},
           {"name": "KDGATE_TRAINER_WORK_DIR", "value": str(settings.work_dir)},
           {"name": "KDGATE_TRAINER_GATEWAY__URL", "value": settings.gateway.url},
           {"name": "KDGATE_TRAINER_DATASET", "value": settings.dataset.model_dump_json()},
           {"name": "KDGATE_TRAINER_TRAIN", "value": settings.train.model_dump_json()},
           {"name": "KDGATE_TRAINER_GOLDEN", "value": settings.golden.model_dump_json()},
           {"name": "KDGATE_TRAINER_GATE", "value": settings.gate.model_dump_json()}]
    if settings.gateway.admin_key is not None:
        env.append({"name": "KDGATE_TRAINER_GATEWAY__ADMIN_KEY",
                    "valueFrom": {"secretKeyRef": {"name": k8s.store_secret, "key": "gateway-admin-key"}}})
    if settings.canary_fraction is not None:
        env.append({"name": "KDGATE_TRAINER_CANARY_FRACTION", "value": str(settings.canary_fraction)})
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
        "metadata": {"name": trainjob_name(job_id), "namespace": k8s.namespace,
                     "labels": {"app.kubernetes.io/name": "kdgate", "app.kubernetes.io/component": "redistill",
                                "kdgate.dev/job": str(job_id)}},
        "spec": {
            "runtimeRef": {"name": k8s.runtime_ref, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": int(settings.job_timeout_s),
            "trainer": {"image": k8s.image, "command": ["kdgate", "trainer", "run-job", str(job_id)],
                        "numNodes": k8s.num_nodes, "numProcPerNode": k8s.num_proc_per_node,
                        "resourcesPerNode": {"limits": dict(k8s.resources_per_node),
                                             "requests": dict(k8s.resources_per_node)},
                        "env": env}}}


class KubernetesRunner:
    """Submits queued jobs as TrainJobs, one at a time, and ends a job whose TrainJob failed without ending it."""

    def __init__(self, settings: TrainerSettings, jobs: TrainJobs):
        from kubernetes import client, config  # the `kubernetes` extra

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.api = client.CustomObjectsApi()
        self.settings, self.jobs = settings, jobs
        self.running: int | None = None

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
        """TrainJobs keep running without the service; the next service follows them again from the store."""

    def _submit(self, job_id: int) -> None:
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
        found = self.api.get_namespaced_custom_object(GROUP, VERSION, self.settings.kubernetes.namespace, PLURAL,
                                                      trainjob_name(job_id))
        conditions = {item["type"]: item for item in (found.get("status") or {}).get("conditions", [])
                      if item.get("status") == "True"}
        if "Failed" in conditions:
            self.jobs.finish(job_id, "failed", f"TrainJob {trainjob_name(job_id)} failed: "
                                               f"{conditions['Failed'].get('message', 'no message')}")
            self.running = None

    def _delete(self, job_id: int) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.settings.kubernetes.namespace, PLURAL,
                                                 trainjob_name(job_id))
