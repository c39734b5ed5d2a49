"""A real vLLM student replica killed and restarted under streaming load, with a LoRA version active: vLLM keeps
runtime adapters in memory, so it comes back ready on /health without the version's adapter and answers 404 for
`<student>@<version>` (the gateway used to pass that 404 to the client). No request fails across the restart (the
teacher answers while the replica is down or without the adapter), the gateway loads the adapter onto the restarted
replica within `students.reconcile_interval_s`, and the active version serves from it again."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import ThreadedServer, free_port
from tests.gateway.students.test_lora_promotion import listed
from tests.gateway.students.test_promotion import PROMPTS, admin, switch_under_load
from tests.vllm.gateways import vllm_gateway_settings
from tests.vllm_servers import VllmServers, spawn_vllm, stop_vllm, vllm_python, wait_ready

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
LORA = ("--enable-lora", "--max-loras", "2", "--max-lora-rank", "64")
RUNTIME_LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


def test_a_restarted_vllm_replica_costs_no_request_and_serves_the_active_version_again(
        vllm_servers, demo_dirs, demo_adapter, tmp_path):
    python, port = vllm_python(), free_port()
    replica = [spawn_vllm(python, demo_dirs[0], "demo-student", tmp_path / "replica.log", "0", *LORA,
                          env=RUNTIME_LORA, port=port)]
    try:
        wait_ready(replica)
        servers = VllmServers(student=replica[0], teacher=vllm_servers.teacher)
        settings = vllm_gateway_settings(
            servers, tmp_path / "store.sqlite3", routing={"handoff": {"enabled": False}}, shadow={"enabled": False},
            students={"enabled": True, "poll_interval_s": 0.2, "reconcile_interval_s": 0.5})
        with ThreadedServer(create_app(settings)) as gateway:
            assert admin(gateway, "POST", "", {"name": "v8", "adapter_path": str(demo_adapter)}).status_code == 201
            assert admin(gateway, "POST", "/v8/promote").status_code == 200

            def restart() -> None:
                stop_vllm(replica[0])
                replica[0] = spawn_vllm(python, demo_dirs[0], "demo-student", tmp_path / "replica-2.log", "0",
                                        *LORA, env=RUNTIME_LORA, port=port)
                wait_ready(replica)

            seen, failures = switch_under_load(gateway, [(restart, None)])
            back = time.monotonic()
            while "demo-student@v8" not in listed(replica[0].base_url) and time.monotonic() - back < 10:
                time.sleep(0.1)
            reloaded_in = time.monotonic() - back
            served = None
            while served != "demo-student@v8" and time.monotonic() - back < 90:  # once the breaker lets it back
                reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
                    "model": "kdgate-demo", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4})
                served = reply.json()["kdgate"]["model"]
                time.sleep(0.2)
    finally:
        stop_vllm(replica[0])
    assert failures == [], failures[:3]
    assert len(seen) > 6  # answers streamed before, across and after the restart
    assert reloaded_in < 5  # the restarted replica lists the active version's adapter again
    assert served == "demo-student@v8" and reply.json()["kdgate"]["route"] == "student"
