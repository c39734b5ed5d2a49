"""`kdgate engine --enable-lora` speaks vLLM's runtime LoRA endpoints: the same paths, bodies, status codes and
messages (vLLM 0.33), adapters addressed by `model`, listed in /v1/models with their parent."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import start_engine_server, stop

RUNTIME_LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
CHAT = {"messages": [{"role": "user", "content": "Hello, my SmartHub Pro from order 48213 will not turn on."}],
        "temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def lora_engine(demo_dirs):
    server = start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA)
    yield server
    stop(server.process)


def answer(server, model: str) -> str:
    reply = httpx.post(f"{server.base_url}/chat/completions", json=CHAT | {"model": model}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_load_serve_list_and_unload_an_adapter(lora_engine, demo_adapter):
    url = lora_engine.base_url
    base = answer(lora_engine, "demo-student")
    loaded = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "student@v2", "lora_path": str(demo_adapter)},
                        timeout=60)
    assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'student@v2' added successfully."
    models = {card["id"]: card for card in httpx.get(f"{url}/models", timeout=10).json()["data"]}
    assert models["student@v2"]["parent"] == "demo-student"
    assert answer(lora_engine, "student@v2") != base and answer(lora_engine, "demo-student") == base
    again = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "student@v2", "lora_path": str(demo_adapter)},
                       timeout=60)
    assert again.status_code == 400
    assert again.json()["error"]["message"] == ("The lora adapter 'student@v2' has already been loaded. If you want "
                                                "to load the adapter in place, set 'load_inplace' to True.")
    removed = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "student@v2"}, timeout=60)
    assert removed.status_code == 200 and removed.text == "Success: LoRA adapter 'student@v2' removed successfully."
    unknown = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "student@v2"}, timeout=60)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The lora adapter 'student@v2' cannot be found."
    gone = httpx.post(f"{url}/chat/completions", json=CHAT | {"model": "student@v2"}, timeout=60)
    assert gone.status_code == 404


def test_a_path_that_is_no_adapter_and_the_base_models_name_are_refused(lora_engine, tmp_path):
    url = lora_engine.base_url
    missing = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "none")},
                         timeout=60)
    assert missing.status_code == 400 and str(tmp_path / "none") in missing.json()["error"]["message"]
    clash = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "demo-student", "lora_path": str(tmp_path)},
                       timeout=60)
    assert clash.status_code == 400 and "conflicts with a served base model" in clash.json()["error"]["message"]


def test_without_the_switch_the_endpoints_do_not_exist(engine_server, demo_adapter):
    """As in vLLM: no VLLM_ALLOW_RUNTIME_LORA_UPDATING (or no --enable-lora), no runtime loading."""
    refused = httpx.post(f"{engine_server.base_url}/load_lora_adapter",
                         json={"lora_name": "x", "lora_path": str(demo_adapter)}, timeout=30)
    assert refused.status_code == 404
