"""A LoRA student version promoted through real `kdgate engine --enable-lora` servers (vLLM's runtime LoRA API):
loaded on every replica before the switch, served under `<student>@<version>`, under load with no failed request;
and when one replica refuses the adapter, nothing is switched and nothing stays loaded anywhere."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import BackendSettings, HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from tests.conftest import ThreadedServer, gateway_settings, start_engine_server, stop
from tests.gateway.students.test_promotion import PROMPTS, admin, answers, switch_under_load

RUNTIME_LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


@pytest.fixture(scope="module")
def replicas(demo_dirs):
    servers = [start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA)
               for _ in range(2)]
    yield servers
    for server in servers:
        stop(server.process)


def lora_gateway(demo_dirs, engine_server, tmp_path, replica_urls: list[str]):
    student = BackendSettings(kind="http", base_url=replica_urls[0], model="demo-student", replica_urls=replica_urls)
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=False)),
                                shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{tmp_path / 's.sqlite3'}"),
                                students=StudentsSettings(enabled=True, poll_interval_s=0.2))
    return ThreadedServer(create_app(settings.model_copy(update={"student": student})))


def listed(url: str) -> set[str]:
    return {card["id"] for card in httpx.get(f"{url}/models", timeout=10).json()["data"]}


def test_an_adapter_goes_onto_every_replica_then_serves_without_a_failed_request(demo_dirs, engine_server, replicas,
                                                                                  demo_adapter, tmp_path):
    urls = [server.base_url for server in replicas]
    with lora_gateway(demo_dirs, engine_server, tmp_path, urls) as gateway:
        expected = {"initial": answers(gateway)}
        assert admin(gateway, "POST", "", {"name": "v2", "adapter_path": str(demo_adapter)}).status_code == 201
        seen, failures = switch_under_load(gateway, [lambda: admin(gateway, "POST", "/v2/promote")])
        assert all("demo-student@v2" in listed(url) for url in urls)  # on both replicas, confirmed before the switch
        expected["v2"] = answers(gateway)
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4})
    assert failures == [] and {version for _, _, version in seen} == {"initial", "v2"}
    assert expected["v2"] != expected["initial"]
    assert [row for row in seen if expected[row[2]][row[0]] != row[1]] == []
    assert reply.json()["kdgate"]["model"] == "demo-student@v2"


def test_a_replica_that_refuses_leaves_everything_as_it_was(demo_dirs, engine_server, replicas, demo_adapter,
                                                          tmp_path):
    """The second replica has no runtime LoRA (a vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING): the
    promotion fails naming it, the first replica's copy is unloaded, and the old version keeps serving."""
    refuser = start_engine_server(demo_dirs[0], "demo-student")
    try:
        urls = [replicas[0].base_url, refuser.base_url]
        with lora_gateway(demo_dirs, engine_server, tmp_path, urls) as gateway:
            assert admin(gateway, "POST", "", {"name": "v3", "adapter_path": str(demo_adapter)}).status_code == 201
            refused = admin(gateway, "POST", "/v3/promote")
            status = admin(gateway, "GET", "/status").json()
            version = admin(gateway, "GET", "/v3").json()
            served = answers(gateway)
    finally:
        stop(refuser.process)
    assert refused.status_code == 502
    assert refuser.base_url in refused.json()["error"]["message"] and "HTTP 404" in refused.json()["error"]["message"]
    assert "demo-student@v3" not in listed(replicas[0].base_url)
    assert status["active"] == "initial" and status["revision"] == 1 and version["state"] == "candidate"
    assert served  # the old version answers as before
