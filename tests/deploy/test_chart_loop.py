"""The chart's re-distillation loop as a cluster would run it, minus the cluster: the chart rendered with
`trainer.runner: kubernetes`, the trainer's settings loaded from exactly what its pod gets (the ConfigMap, the env,
the Secrets), the TrainJob the trainer would create from them, and that TrainJob's entrypoint run with exactly its
environment and its mounts, on the demo student served by `kdgate engine --enable-lora` (vLLM's runtime-LoRA API)
behind a gateway, to a promoted LoRA version the gateway serves.

Mounts are honoured by rendering with mount paths that are this machine's folders (a claim's folder *is* its mount
path here). One address is changed: the gateway's cluster DNS name, for this test's gateway. The gate is opened
wide (its judgment has its own tests): what is checked is that the job gets what it needs, not that 20 steps help.
Before: the job lacked the student's weights folder ("no weights for the active version"), trained without LoRA,
and registered an adapter folder that did not exist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from transformers import AutoTokenizer

from distill.demo import task
from distill.online.kubernetes import trainjob_manifest
from distill.online.settings import load_trainer_settings
from gateway.app import create_app
from gateway.settings import BackendSettings, HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from runtime.credentials import new_key
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersions
from tests import needs
from tests.conftest import ThreadedServer, gateway_settings, start_engine_server, stop
from tests.deploy.helm_render import one, render
from tests.distill.online.records import make_records

pytestmark = pytest.mark.slow
needs.module("helm_python", install=needs.DEV_EXTRA)

WIDE_GATE = {"min_kl_drop": 0.0, "agreement_tolerance": 1.0, "golden_tolerance": 1.0, "valid_tolerance": 1.0,
             "ece_tolerance": 1.0}


def chart_values(shared, weights, student_dir) -> dict:
    return {"sharedStorage": {"existingClaim": "kdgate-work", "mountPath": str(shared)},
            "models": {"student": {"modelURL": str(student_dir),
                                   "storage": {"existingClaim": "kdgate-weights", "mountPath": str(weights)}}},
            "trainer": {"runner": "kubernetes", "settings": {
                "KDGATE_TRAINER_DATASET__MIN_RECORDS": 20, "KDGATE_TRAINER_GOLDEN__EXAMPLES": 20,
                "KDGATE_TRAINER_TRAIN__THREADS": 1, "KDGATE_TRAINER_GATE": WIDE_GATE,
                "KDGATE_TRAINER_TRAIN__OVERRIDES": ["steps=20", "eval_every=20", "checkpoint_every=20"]}}}


def pod_environment(container: dict, config_maps: dict[str, dict], secrets: dict[tuple[str, str], str]) -> dict:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then env (values and Secret keys)."""
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= config_maps[source["configMapRef"]["name"]]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if (ref["name"], ref["key"]) in secrets or not ref.get("optional"):
                env[item["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def test_the_charts_trainjob_runs_to_a_promoted_lora_version(tmp_path, demo_dirs, engine_server, monkeypatch):
    shared, weights = tmp_path / "claims" / "work", tmp_path / "claims" / "weights"
    student_dir = weights / "student"
    shutil.copytree(demo_dirs[0], student_dir)
    shared.mkdir(parents=True)
    claims = {"kdgate-work": shared, "kdgate-weights": weights}
    objects = render(chart_values(shared, weights, student_dir))
    store_url, admin_key = f"sqlite:///{tmp_path / 'store.sqlite3'}", new_key()[0]
    secrets = {("kdgate-store", "url"): store_url, ("kdgate-store", "gateway-admin-key"): admin_key,
               ("kdgate-trainer-auth", "alerts-sha256"): "a" * 64, ("kdgate-trainer-auth", "admin-sha256"): "b" * 64}

    # the trainer pod's settings, exactly as rendered
    trainer_pod = one(objects, "Deployment", "kdgate-trainer")["spec"]["template"]["spec"]
    (container,) = trainer_pod["containers"]
    config_maps = {item["metadata"]["name"]: item["data"] for item in objects if item["kind"] == "ConfigMap"}
    for name in [name for name in os.environ if name.startswith("KDGATE_")]:
        monkeypatch.delenv(name)
    for name, value in pod_environment(container, config_maps, secrets).items():
        monkeypatch.setenv(name, value)
    settings = load_trainer_settings(None)
    assert settings.runner == "kubernetes" and settings.student_base_dir == student_dir

    replica = start_engine_server(student_dir, "demo-student", "--enable-lora",
                                  env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    try:
        student = BackendSettings(kind="http", base_url=replica.base_url, model="demo-student",
                                  replica_urls=[replica.base_url])
        gateway_config = gateway_settings(
            demo_dirs, engine_server, routing=RoutingSettings(policy="student_only",
                                                              handoff=HandoffSettings(enabled=False)),
            shadow=ShadowSettings(enabled=False, store_url=store_url),
            students=StudentsSettings(enabled=True, poll_interval_s=0.2))
        with ThreadedServer(create_app(gateway_config.model_copy(update={"student": student}))) as gateway:
            store = ShadowStore(store_url)
            active = StudentVersions(store).slot().active
            tokenizer = AutoTokenizer.from_pretrained(student_dir)
            for record in make_records(tokenizer, task.take("train", 40, seed=3), student_version=active,
                                       start=datetime.now(UTC) + timedelta(seconds=1)):
                store.write(record)
            job, _ = TrainJobs(store).create("alert", {})

            # the TrainJob the trainer creates, and its container run with exactly its environment and mounts
            manifest = trainjob_manifest(job.id, settings)
            (patch,) = manifest["spec"]["runtimePatches"]
            (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            pod = replicated["template"]["spec"]["template"]["spec"]
            assert pod["volumes"] == trainer_pod["volumes"]
            assert pod["containers"][0]["volumeMounts"] == container["volumeMounts"]
            volumes = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
            for mount in pod["containers"][0]["volumeMounts"]:
                assert mount["mountPath"] == str(claims[volumes[mount["name"]]])
            job_env = {item["name"]: item["value"] if "value" in item else
                       secrets[(item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])]
                       for item in manifest["spec"]["trainer"]["env"]}
            link = json.loads(job_env["KDGATE_TRAINER_GATEWAY"])
            assert link["url"] == "http://kdgate-gateway:8000"  # the cluster's name for it
            job_env["KDGATE_TRAINER_GATEWAY"] = json.dumps(link | {"url": gateway.url})
            clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
            workdir = tmp_path / "pod"
            workdir.mkdir()
            done = subprocess.run([sys.executable, "-m", "kdgate.cli", *manifest["spec"]["trainer"]["command"][1:]],
                                  cwd=workdir, env=clean | job_env, capture_output=True, text=True, timeout=900)
            ended = TrainJobs(store).get(job.id)
            versions = StudentVersions(store)
            slot, version = versions.slot(), versions.get(f"rd-{job.id}")
            store.close()
            reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "my order 12345 is late"}], "max_tokens": 4})
    finally:
        stop(replica.process)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (ended.state, ended.reason) == ("succeeded", None), ended
    assert ended.figures["train"]["lora"] is True  # an adapter version implies LoRA training
    assert slot.active == f"rd-{job.id}" and version.kind == "lora"
    assert version.adapter_path.startswith(str(shared)) and os.path.isfile(
        os.path.join(version.adapter_path, "adapter_config.json"))
    assert reply.status_code == 200 and reply.json()["kdgate"]["model"] == f"demo-student@rd-{job.id}"
