"""docs/student-versions.md's LoRA flow against vLLM's own runtime-LoRA API (the student server runs with
`--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1): register, canary, promote to full, promote another,
roll back, canary the rolled-back one again and roll that back. vLLM refuses to load a listed adapter again (400);
the gateway's LoRA manager must never ask it to, and must unload what it rolled back."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from tests.conftest import ThreadedServer
from tests.gateway.students.test_lora_promotion import listed
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
