"""Several distilled pairs behind one gateway (`kdgate serve --config A --config B`, gateway.pairs): the demo's
plain pair as `support` and its tool-calling pair as `lookup`, each with its own store, routing and versions, on one
port, asked through the official openai SDK by the model each request names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
import yaml

from distill.demo import tools as demo_tools
from distill.online.promote import Gateway, PromotionFailed
from distill.online.settings import GatewayLink
from runtime.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR, DEMO_TOOLS_DIR
from tests.conftest import ROOT, free_port, stop, wait_until_up

pytestmark = pytest.mark.slow


def pair_file(folder, name: str, models, port: int) -> str:
    student, teacher = models
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "served_model": name, "port": port,
        "student": {"kind": "local", "model_dir": str(student), "model": f"{name}-student", "threads": 1},
        "teacher": {"kind": "local", "model_dir": str(teacher), "model": f"{name}-teacher", "threads": 1},
        "shadow": {"enabled": False, "store_url": f"sqlite:///{folder / name}.sqlite3"},
        "students": {"enabled": True}}))
    return str(path)


@pytest.fixture(scope="module")
def two_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    port = free_port()
    files = [pair_file(folder, "support", (DEMO_STUDENT_DIR, DEMO_TEACHER_DIR), port),
             pair_file(folder, "lookup", (DEMO_TOOLS_DIR / "student", DEMO_TOOLS_DIR / "teacher"), port)]
    log = (folder / "serve.log").open("w")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}  # the files alone
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--config", files[0], "--config",
                                files[1]], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        stop(process)
        log.close()


def test_each_request_is_served_by_the_pair_its_model_names(two_pairs):
    url, _ = two_pairs
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    ticket = "Hello, order 12345 never arrived. I have a Basic account."
    plain = client.chat.completions.create(model="support", messages=[{"role": "user", "content": ticket}],
                                           max_tokens=96, temperature=0)
    called = client.chat.completions.create(model="lookup", messages=[{"role": "user", "content": ticket}],
                                            tools=list(demo_tools.TOOLS), tool_choice="required", max_tokens=96,
                                            temperature=0)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": ticket}], max_tokens=96, temperature=0, stream=True)
        if chunk.choices)
    assert plain.model == "support" and isinstance(json.loads(plain.choices[0].message.content), dict)
    assert streamed == plain.choices[0].message.content  # streamed through the dispatcher, the same answer
    assert called.model == "lookup" and called.choices[0].message.tool_calls[0].function.name == "lookup_order"
    assert {model.id for model in client.models.list()} == {"support", "support@initial", "lookup", "lookup@initial"}
    assert client.models.retrieve("lookup").id == "lookup"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="billing", messages=[{"role": "user", "content": "hi"}])
    assert "`support`, `lookup`" in unknown.value.message and unknown.value.code == "model_not_found"
    missing = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    huge = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={  # read to find its pair: refused past the limit
        "model": "support", "messages": [{"role": "user", "content": "x" * 1_100_000}]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


def test_metrics_readiness_and_admin_are_per_pair(two_pairs):
    url, _ = two_pairs
    httpx.post(f"{url}/v1/chat/completions", timeout=60, json={"model": "support", "max_tokens": 4,
                                                               "messages": [{"role": "user", "content": "hi"}]})
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    served = {line.split('served_model="')[1].split('"')[0] for line in metrics.splitlines()
              if line.startswith("kdgate_requests_total{")}
    assert "support" in served
    assert metrics.count("# TYPE kdgate_requests_total counter") == 1  # one family, each pair's samples in it
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200 and set(ready.json()["pairs"]) == {"support", "lookup"}
    answers = {name: httpx.get(f"{url}/admin/v1/students", headers={"x-kdgate-model": name}, timeout=30)
               for name in ("support", "lookup")}
    assert [answer.status_code for answer in answers.values()] == [200, 200]
    versions = {name: answer.json() for name, answer in answers.items()}
    assert [version["name"] for version in versions["support"]["versions"]] != [] and \
        versions["support"]["versions"][0]["model_dir"] == str(DEMO_STUDENT_DIR)
    assert versions["lookup"]["versions"][0]["model_dir"] == str(DEMO_TOOLS_DIR / "student")
    unnamed = httpx.get(f"{url}/admin/v1/students", timeout=30)
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "x-kdgate-model"
    # a pair's trainer names its pair on the admin calls it makes; its LoRA student's readiness probe asks for its
    # own pair's adapters (before, both reached the first pair, or nothing)
    assert Gateway(GatewayLink(url=url, model="lookup")).status()["active"] == "initial"
    with pytest.raises(PromotionFailed, match="x-kdgate-model"):
        Gateway(GatewayLink(url=url)).status()
    adapters = httpx.get(f"{url}/readyz/adapters", headers={"x-kdgate-model": "lookup"}, timeout=30)
    assert adapters.status_code == 200 and adapters.json()["adapters"] == []
    unnamed = httpx.get(f"{url}/readyz/adapters", timeout=30)
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "x-kdgate-model"


def test_two_pairs_may_not_share_a_model_name_or_a_store(tmp_path):
    port = free_port()
    first = pair_file(tmp_path, "support", (DEMO_STUDENT_DIR, DEMO_TEACHER_DIR), port)
    again = tmp_path / "again.yaml"
    again.write_text((tmp_path / "support.yaml").read_text().replace("support.sqlite3", "other.sqlite3"))
    same_name = subprocess.run([sys.executable, "-m", "kdgate.cli", "serve", "--config", first, "--config",
                                str(again)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert same_name.returncode != 0 and "two settings files serve `support`" in same_name.stderr + same_name.stdout
    shared = tmp_path / "shared.yaml"
    shared.write_text((tmp_path / "support.yaml").read_text().replace("served_model: support",
                                                                       "served_model: billing"))
    same_store = subprocess.run([sys.executable, "-m", "kdgate.cli", "serve", "--config", first, "--config",
                                 str(shared)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert same_store.returncode != 0 and "share a record store" in same_store.stderr + same_store.stdout
