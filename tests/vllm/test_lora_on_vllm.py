"""docs/student-versions.md's LoRA flow against vLLM's own runtime-LoRA API (the student server runs with
`--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1): register, canary, promote to full, promote another,
roll back, canary the rolled-back one again and roll that back. vLLM refuses to load a listed adapter again (400);
the gateway's LoRA manager must never ask it to, and must unload what it rolled back."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import ThreadedServer
from tests.gateway.students.test_lora_promotion import listed, probe
from tests.gateway.students.test_promotion import admin, answers
from tests.vllm.gateways import vllm_gateway_settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def test_the_documented_flow_canary_full_rollback_and_again(vllm_servers, demo_adapter, tmp_path):
    student = vllm_servers.student
    settings = vllm_gateway_settings(
        vllm_servers, tmp_path / "store.sqlite3", routing={"handoff": {"enabled": False}},
        shadow={"enabled": False}, students={"enabled": True, "poll_interval_s": 0.2})

    def on_vllm(version: str) -> bool:
        return f"demo-student@{version}" in listed(student.base_url)

    with ThreadedServer(create_app(settings)) as gateway:
        initial = answers(gateway)
        for name in ("v4", "v5"):
            assert admin(gateway, "POST", "", {"name": name, "adapter_path": str(demo_adapter)}).status_code == 201
        steps = [("canary v4", admin(gateway, "POST", "/v4/promote", {"canary_fraction": 0.5})),
                 ("full v4", admin(gateway, "POST", "/v4/promote"))]
        served_v4 = answers(gateway)
        steps.append(("full v5", admin(gateway, "POST", "/v5/promote")))
        kept = on_vllm("v4")  # v5's rollback target keeps its adapter
        steps.append(("rollback to v4", admin(gateway, "POST", "/rollback")))
        after_rollback = {"v4": on_vllm("v4"), "v5": on_vllm("v5")}
        steps.append(("canary v5 again", admin(gateway, "POST", "/v5/promote", {"canary_fraction": 0.5})))
        steps.append(("canary rolled back", admin(gateway, "POST", "/rollback")))
        after_canary = on_vllm("v5")
        steps.append(("full v5 again", admin(gateway, "POST", "/v5/promote")))
        served_v5 = answers(gateway)
        status = admin(gateway, "GET", "/status").json()
    assert [(step, reply.status_code) for step, reply in steps] == [(step, 200) for step, _ in steps], \
        [reply.text for _, reply in steps if reply.status_code != 200]
    assert served_v4 != initial  # the adapter changes the answers: vLLM applied it
    assert served_v5 == served_v4  # the same adapter weights under another name
    assert kept is True and after_rollback == {"v4": True, "v5": False} and after_canary is False
    assert status["active"] == "v5" and status["canary"] is None


def test_the_charts_readiness_probe_follows_the_adapters_on_vllm(vllm_servers, demo_adapter, tmp_path):
    """The chart's student readiness (helm/kdgate/files/student_ready.py) against vLLM itself: ready while vLLM
    lists the serving version's adapter, not ready once vLLM has lost it (as a restarted replica has), ready again
    when the gateway's reconciliation has loaded it back."""
    student = vllm_servers.student
    settings = vllm_gateway_settings(
        vllm_servers, tmp_path / "store.sqlite3", routing={"handoff": {"enabled": False}},
        shadow={"enabled": False}, students={"enabled": True, "poll_interval_s": 0.2, "reconcile_interval_s": 1.0})
    with ThreadedServer(create_app(settings)) as gateway:
        assert admin(gateway, "POST", "", {"name": "v8", "adapter_path": str(demo_adapter)}).status_code == 201
        assert admin(gateway, "POST", "/v8/promote").status_code == 200
        ready = probe(student.base_url, gateway.url)
        assert httpx.post(f"{student.base_url}/unload_lora_adapter", json={"lora_name": "demo-student@v8"},
                          timeout=30).status_code == 200
        lost = probe(student.base_url, gateway.url)
        deadline, again = time.monotonic() + 30, None
        while time.monotonic() < deadline and (again is None or again.returncode != 0):
            time.sleep(0.5)
            again = probe(student.base_url, gateway.url)
    assert ready.returncode == 0 and "demo-student@v8" in ready.stdout
    assert lost.returncode == 1 and "does not list demo-student@v8" in lost.stderr
    assert again.returncode == 0
