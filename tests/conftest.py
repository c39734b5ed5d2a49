"""Shared fixtures: real servers on loopback.

- `engine_server`: `kdgate engine` on the demo teacher, started as a subprocess (the HTTP backend's peer, as vLLM
  would be in production).
- `gateway`: the gateway app run by uvicorn in a thread of the test process (real sockets, and the app's state is
  reachable for assertions), student local, teacher over HTTP to `engine_server`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from distill.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR
from gateway.threaded import ThreadedServer, free_port, wait_until_up  # noqa: F401  (tests import them here)
from tests import needs

# Gateways the tests start would otherwise share the default record store (var/ under the working directory) and
# its student versions across configurations; the student-version tests turn versions on with a store of their own.
os.environ.setdefault("KDGATE_STUDENTS__ENABLED", "false")

# tests.postgres: the `postgres_url` fixture, a real PostgreSQL cluster; tests.skips: skips counted by reason, and
# refused under CI; tests.timeouts: slow tests' longer limit; tests.workers: which tests share an xdist worker;
# tests.summary: the run's closing lines (vLLM's and Docker's costs); pytester: tests/test_skips.py and
# tests/test_timeouts.py run small suites through those hooks.
pytest_plugins = ["tests.postgres", "tests.skips", "tests.timeouts", "tests.workers", "tests.summary",
                  "tests.vllm_servers", "pytester"]

ROOT = Path(__file__).resolve().parent.parent

# No per-example deadline: the properties check answers, not speed, and a 2-core box running the suite on two
# workers took 309 ms for the first example of test_responses_tools.py's stream property (Hypothesis' 200 ms
# deadline failed it as flaky; it took 8 ms when replayed)
settings.register_profile("kdgate", deadline=None)
settings.load_profile("kdgate")


@pytest.fixture(scope="session")
def demo_dirs() -> tuple[Path, Path]:
    for directory in (DEMO_STUDENT_DIR, DEMO_TEACHER_DIR):
        if not (directory / "config.json").is_file():
            pytest.fail(f"demo model missing at {directory}; run `kdgate demo build`")
    return DEMO_STUDENT_DIR, DEMO_TEACHER_DIR


@dataclass
class EngineServer:
    base_url: str
    model: str
    process: subprocess.Popen


def start_engine_server(model_dir: Path, name: str, *extra: str, env: dict | None = None,
                        port: int | None = None, host: str = "127.0.0.1") -> EngineServer:
    """`kdgate engine` on `host` (any 127/8 address is loopback on Linux: replicas behind one name, one port)."""
    port = port or free_port()
    command = [sys.executable, "-m", "kdgate.cli", "engine", "--model", str(model_dir), "--host", host, "--port",
               str(port), "--served-model-name", name, "--threads", "1", *extra]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))
    wait_until_up(f"http://{host}:{port}/health", process)
    return EngineServer(base_url=f"http://{host}:{port}/v1", model=name, process=process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def engine_server(demo_dirs) -> Iterator[EngineServer]:
    server = start_engine_server(demo_dirs[1], "demo-teacher")
    yield server
    stop(server.process)


def gateway_settings(demo_dirs, engine: EngineServer, **overrides):
    from gateway.settings import BackendSettings, GatewaySettings, ShadowSettings, StudentsSettings

    student = BackendSettings(kind="local", model_dir=demo_dirs[0], model="demo-student", threads=1)
    teacher = BackendSettings(kind="http", base_url=engine.base_url, model=engine.model)
    overrides.setdefault("shadow", ShadowSettings(enabled=False))  # shadow tests turn it on with their own store
    overrides.setdefault("students", StudentsSettings(enabled=False))  # version tests: with their own store too
    return GatewaySettings(student=student, teacher=teacher, **overrides)


@pytest.fixture(scope="session")
def gateway(demo_dirs, engine_server) -> Iterator[ThreadedServer]:
    from gateway.app import create_app

    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server))) as server:
        yield server


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """Debian's redis-server on a free port, no persistence (`.ci/run` installs it)."""
    binary = needs.tool("redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30  # a loaded CI box can take seconds to start it
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                pytest.fail(f"redis-server on port {port} did not answer a PING in 30 s "
                            f"(exit code {process.poll()})")
            time.sleep(0.05)
    yield RedisServer(url=f"redis://127.0.0.1:{port}/0", process=process)
    stop(process)


@pytest.fixture(scope="session")
def demo_adapter(demo_dirs, tmp_path_factory) -> Path:
    """A LoRA adapter over the demo student whose answers differ from the student's (random, not zero, updates)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("adapter") / "student-lora"
    model = AutoModelForCausalLM.from_pretrained(demo_dirs[0], dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)  # random A and B: the adapter changes the answers
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_dirs[0]).save_pretrained(out)
    return out

