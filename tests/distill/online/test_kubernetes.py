"""The Kubernetes runner's TrainJob: valid against Kubeflow Trainer's own CRD schema, secrets by reference, and
its container's entrypoint runs a job from the environment alone, as it would in the pod."""

from __future__ import annotations

import os
import subprocess
import sys

import jsonschema_rs
import pytest
import yaml

from distill.online.kubernetes import SERVICE_ONLY, trainjob_manifest
from distill.online.settings import load_trainer_settings
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from tests.conftest import ROOT

CRD = ROOT / "deploy" / "kubernetes" / "crds" / "trainer.kubeflow.org_trainjobs.yaml"


@pytest.fixture(scope="module")
def trainjob_schema():
    crd = next(document for document in yaml.safe_load_all(CRD.read_text()) if document)
    (version,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1alpha1"]
    return jsonschema_rs.validator_for(version["schema"]["openAPIV3Schema"])


def test_the_trainjob_is_valid_against_the_crd(trainjob_schema):
    settings = load_trainer_settings(None, kubernetes={"num_nodes": 2, "num_proc_per_node": 8,
                                                       "resources_per_node": {"nvidia.com/gpu": "8"}},
                                     gateway={"url": "http://kdgate:8000", "admin_key": "kdg-secret"})
    manifest = trainjob_manifest(7, settings)
    errors = [error.message for error in trainjob_schema.iter_errors(manifest)]
    assert errors == []
    trainer = manifest["spec"]["trainer"]
    assert trainer["command"] == ["kdgate", "trainer", "run-job", "7"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert "kdg-secret" not in yaml.safe_dump(manifest)  # secrets by reference only
    assert trainjob_schema.iter_errors(manifest | {"spec": {"trainer": {"numNodes": "two"}}}).__next__()


def test_the_entrypoint_runs_a_job_from_the_environment_alone(tmp_path):
    """The pod has no config file: the manifest's env (secret references resolved) is all the job reads."""
    settings = load_trainer_settings(None, work_dir=tmp_path / "work")
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    store = ShadowStore(store_url)
    job, _ = TrainJobs(store).create("manual", {})
    env = {item["name"]: item.get("value") for item in trainjob_manifest(job.id, settings)["spec"]["trainer"]["env"]}
    env["KDGATE_TRAINER_STORE_URL"] = store_url  # what the secret reference resolves to in the pod
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "trainer", "run-job", str(job.id)], cwd=tmp_path,
                          env=clean | env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ended = TrainJobs(store).get(job.id)
    store.close()
    assert ended.state == "skipped" and "no active student version" in ended.reason


def resolved(manifest: dict, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The training container's environment as the kubelet gives it: values, and secret references looked up."""
    env = {}
    for item in manifest["spec"]["trainer"]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def test_the_job_reads_every_setting_the_trainer_has(tmp_path, monkeypatch):
    """Every setting but the service's own reaches the job: it lacked `student_base_dir` and the handoff target
    (only the trainer pod had them), so a chart's job failed with "no weights for the active version"."""
    settings = load_trainer_settings(
        None, store_url=f"sqlite:///{tmp_path / 's.sqlite3'}", work_dir=tmp_path / "work",
        student_base_dir=tmp_path / "student", handoff_target_teacher_fraction=0.3, canary_fraction=0.25,
        job_timeout_s=99.0, gateway={"url": "http://gw:8000", "admin_key": "kdg-admin", "timeout_s": 12.0},
        dataset={"min_records": 7, "replay_cache": str(tmp_path / "cache"), "gather_wait_s": 3.0},
        train={"overrides": ["steps=5"], "threads": 2, "register_as": "adapter"},
        golden={"examples": 9}, gate={"min_kl_drop": 0.1, "significance": 0.01})
    manifest = trainjob_manifest(3, settings)
    env = resolved(manifest, {("kdgate-store", "url"): settings.store_url,
                              ("kdgate-store", "gateway-admin-key"): "kdg-admin"})
    assert "kdg-admin" not in yaml.safe_dump(manifest)
    for name in list(os.environ):
        if name.startswith("KDGATE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = load_trainer_settings(None)
    job_fields = set(type(settings).model_fields) - SERVICE_ONLY
    assert {name: getattr(loaded, name) for name in job_fields} == {name: getattr(settings, name)
                                                                   for name in job_fields}
    assert loaded.gateway.admin_key.get_secret_value() == "kdg-admin"


def test_the_trainjob_mounts_the_volumes_the_trainer_names(trainjob_schema):
    """The stock runtime mounts nothing the job needs: the TrainJob patches the trainer's volumes into the
    runtime's `node` job and container, valid against the CRD."""
    volumes = [{"name": "work", "persistentVolumeClaim": {"claimName": "kdgate-work"}}]
    mounts = [{"name": "work", "mountPath": "/var/kdgate/trainer"}]
    settings = load_trainer_settings(None, kubernetes={"volumes": volumes, "volume_mounts": mounts})
    manifest = trainjob_manifest(4, settings)
    assert [error.message for error in trainjob_schema.iter_errors(manifest)] == []
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert job["name"] == "node" and pod["volumes"] == volumes
    assert pod["containers"] == [{"name": "node", "volumeMounts": mounts}]
    assert "runtimePatches" not in trainjob_manifest(4, load_trainer_settings(None))["spec"]
