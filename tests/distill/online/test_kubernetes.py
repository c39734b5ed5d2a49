"""The Kubernetes runner's TrainJob: valid against Kubeflow Trainer's own CRD schema, secrets by reference, and
its container's entrypoint runs a job from the environment alone, as it would in the pod."""

from __future__ import annotations

import os
import subprocess
import sys

import jsonschema_rs
import pytest
import yaml

from distill.online.kubernetes import trainjob_manifest
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
