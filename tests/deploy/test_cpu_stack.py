"""deploy/cpu-stack/run.py end to end: it starts the compose services on loopback (two `kdgate engine` servers, the
gateway, the trainer, Debian's Alertmanager and Prometheus), answers a chat request through the official `openai`
SDK with the key it printed, Prometheus scrapes the gateway with the metrics token, and Ctrl-C stops every process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from distill.demo import task
from tests import needs
from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "cpu-stack" / "run.py"
pytestmark = pytest.mark.slow
_needs = needs.requires("prometheus", "alertmanager")


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise TimeoutError(what)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_cpu_stack_answers_through_the_openai_sdk_and_stops_on_ctrl_c(demo_dirs, tmp_path):
    out = tmp_path / "stack"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("KDGATE_")}
    output = tmp_path / "run.log"  # a file, not a pipe: nobody reads a pipe during the wait, and a full one blocks
    with output.open("w") as sink:
        process = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out)], stdout=sink,
                                   stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
    info = None
    try:
        def ready():
            assert process.poll() is None, output.read_text()
            return (out / "stack.json").is_file() and json.loads((out / "stack.json").read_text())

        info = wait_for(ready, 300, "the stack did not come up in 5 minutes")
        ticket = task.take("test", 1, seed=3)[0]
        client = OpenAI(base_url=info["urls"]["gateway"] + "/v1", api_key=info["keys"]["chat"], max_retries=0)
        assert info["served_model"] == "kdgate-demo"  # the model the README's examples send
        reply = client.chat.completions.create(model="kdgate-demo", messages=ticket.messages(),
                                               max_tokens=96, temperature=0)
        assert json.loads(reply.choices[0].message.content)["queue"] == ticket.answer["queue"]
        assert client.models.list().data[0].id == info["served_model"]

        def gateway_scraped():
            targets = httpx.get(info["urls"]["prometheus"] + "/api/v1/targets", timeout=5).json()["data"]
            return {target["labels"]["job"]: target["health"] for target in targets["activeTargets"]}.get(
                "kdgate-gateway") == "up"

        wait_for(gateway_scraped, 60, "Prometheus did not scrape the gateway with the metrics token")
        original = httpx.get(info["urls"]["alertmanager"] + "/api/v2/status", timeout=5).json()["config"]["original"]
        assert f"{info['urls']['trainer']}/v1/alerts" in original
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, output.read_text()
    assert info is not None and not [name for name, pid in info["pids"].items() if alive(pid)]


def load_run_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_stack_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_vllm_server_gets_launch_yamls_flags_less_the_gpu_sizing(tmp_path):
    """`--vllm`: the real servers take deploy/vllm/launch.yaml's flags (the LoRA slots, the logprobs cap, the name),
    less --gpu-memory-utilization and the 8k context, in float32 on the demo's 512 tokens."""
    import yaml

    run = load_run_module()
    launch = yaml.safe_load(run.LAUNCH.read_text())["services"]["vllm-student"]["command"]
    command = run.vllm_command("/venv/bin/python", tmp_path, 8123, launch)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert {"--served-model-name=student", "--max-logprobs=20", "--enable-lora", "--max-loras=2",
            "--max-lora-rank=64"} <= set(command)
    assert not [flag for flag in command if flag.startswith(("--gpu-memory-utilization", "--max-model-len="))]
    assert command[command.index("--max-model-len") + 1] == "512" and "float32" in command


def test_a_relative_vllm_python_still_names_the_venvs_python_from_the_stack_folder(tmp_path, monkeypatch):
    """`./dev serve-vllm` passes `.venv-vllm/bin/python`; the servers start in the stack's folder, where that path
    named nothing (FileNotFoundError before any server started)."""
    venv_python = tmp_path / "repo" / ".venv-vllm" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path / "repo")
    run = load_run_module()
    python = run.absolute(".venv-vllm/bin/python")
    assert python == str(venv_python) and Path(python).is_absolute()  # the link itself: the venv stays the venv
    assert run.absolute(None) is None


def test_serving_only_answers_the_readmes_requests_as_written(tmp_path):
    """`--serving-only` (what `./dev serve-vllm` runs, with real vLLM): the model servers and an open loopback
    gateway, so the README's quick-start requests (no key, model kdgate-demo) work against it unchanged."""
    from tests.kdgate.test_serve_defaults import held_out_ticket, quick_start_requests

    out = tmp_path / "stack"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("KDGATE_")}
    output = tmp_path / "run.log"
    with output.open("w") as sink:
        process = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--serving-only"], stdout=sink,
                                   stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
    try:
        def ready():
            assert process.poll() is None, output.read_text()
            return (out / "stack.json").is_file() and json.loads((out / "stack.json").read_text())

        info = wait_for(ready, 300, "the serving stack did not come up in 5 minutes")
        routes = []
        for body in quick_start_requests():
            reply = httpx.post(f"{info['urls']['gateway']}/v1/chat/completions", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == held_out_ticket(
                body["messages"][0]["content"]).answer_json()
            routes.append((reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]))
        assert routes == [("student", "policy:student_only"), ("teacher", "handoff")]
        assert set(info["pids"]) == {"student", "teacher", "gateway"}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert "no API key (loopback only)" in output.read_text()
