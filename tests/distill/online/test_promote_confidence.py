"""A job that passes the gate promotes its candidate through a real gateway whose routing is a calibrated
confidence policy: the trainer refits the threshold to the candidate on the held-out records and registers that
policy file with it (the gateway refuses a version without one: a threshold fitted to another student)."""

from __future__ import annotations

import httpx
import pytest

from distill.online.app import create_trainer_app
from gateway.app import create_app
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from router.policy_file import load_policy
from runtime.demo import ARTIFACTS_DIR
from tests.conftest import ThreadedServer, gateway_settings
from tests.distill.online.test_service import call, seed_records, trainer_config, wait_job

POLICY = ARTIFACTS_DIR / "router-policy.json"


@pytest.mark.slow
def test_a_promoted_candidate_brings_its_own_refitted_threshold(tmp_path, demo_dirs, engine_server):
    store = tmp_path / "store.sqlite3"
    gateway = gateway_settings(demo_dirs, engine_server,
                               routing=RoutingSettings(policy="confidence", policy_file=POLICY,
                                                       handoff=HandoffSettings(enabled=False)),
                               shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{store}"),
                               students=StudentsSettings(enabled=True, poll_interval_s=0.2))
    with ThreadedServer(create_app(gateway)) as served:
        # the gate is not under test here: any candidate passes it
        settings, path = trainer_config(tmp_path, gateway={"url": served.url},
                                        train={"threads": 1, "overrides": ["steps=10"]},
                                        gate={"min_kl_drop": 0.0, "agreement_tolerance": 1.0, "golden_tolerance": 1.0,
                                              "valid_tolerance": 1.0, "ece_tolerance": 1.0})
        seed_records(settings, demo_dirs, count=40)
        with ThreadedServer(create_trainer_app(settings, path)) as trainer:
            job_id = call(trainer, "POST", "/v1/jobs", json={"reason": "test"}).json()["id"]
            job = wait_job(trainer, job_id, ("succeeded", "failed", "rejected"), timeout=300)
        status = httpx.get(f"{served.url}/admin/v1/students/status", timeout=30).json()
        version = httpx.get(f"{served.url}/admin/v1/students/rd-{job_id}", timeout=30).json()

    assert job["state"] == "succeeded", (job["reason"], job.get("log_tail"))
    refit = job["figures"]["recalibrate"]
    assert status["active"] == f"rd-{job_id}"
    assert version["policy_file"] == refit["policy_file"] != str(POLICY)
    policy = load_policy(refit["policy_file"])
    assert policy.threshold == refit["threshold"] and policy.scorer == load_policy(POLICY).scorer
    assert abs(refit["realised_teacher_fraction"] - refit["target_teacher_fraction"]) <= 1 / refit["examples"]
