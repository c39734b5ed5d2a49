"""deploy/docker/engine.Dockerfile and the CPU variant of trainer.Dockerfile (`--build-arg TORCH=cpu`) built and run
for real: the engine container serves the demo student to the `openai` SDK with logprobs, token for token what the
same model answers from `kdgate engine` on the host; the trainer container distils the demo student with LoRA on a
teacher cache it makes itself, with no network, and its default command answers its health check.

Both build on the Debian-made base (conftest.py) and take the CPU build of torch from a wheel in
deploy/docker/wheels/, which `pip download` fills from wherever this machine's pip finds the pinned `+cpu` wheel
(PyPI's torch is the CUDA build, several GB, and PyTorch's index does not answer here); without one, the builds use
PyTorch's CPU index. The trainer's default, CUDA variant starts from pytorch/pytorch, which no registry here serves:
the release workflow builds that one. On 2 cores beside a training run, with the base image made and an empty
build cache, the module took 4 min 18 s: the engine image 89 s, the trainer's 123 s (their torch layer and pip's
cache shared), the job 30 s. It prints each step's time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port, start_engine_server, stop
from tests.deploy.docker_daemon import Docker

pytestmark = pytest.mark.slow

ENGINE_TAG = "kdgate-engine:test"
TRAINER_TAG = "kdgate-trainer:test-cpu"
WHEELS = ROOT / "deploy" / "docker" / "wheels"
TICKET = [{"role": "user", "content": "Order #58514: the SmartHub Pro charged me twice. Regards, Kofi Silva"}]


def pinned_torch() -> str:
    (version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "deploy/docker/engine.Dockerfile").read_text(),
                            re.MULTILINE)
    return version


@pytest.fixture(scope="module")
def cpu_torch_wheel(docker: Docker) -> Path | None:
    """The pinned CPU wheel in deploy/docker/wheels/ (for the image's Python, 3.11), fetched by this machine's pip."""
    version = pinned_torch()
    found = sorted(WHEELS.glob(f"torch-{version}+cpu-cp311-*.whl"))
    if not found:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.11", "--dest", str(WHEELS), f"torch=={version}+cpu"],
                              capture_output=True, text=True, timeout=600)
        found = sorted(WHEELS.glob(f"torch-{version}+cpu-cp311-*.whl"))
        docker.timings["torch wheel"] = (f"{time.monotonic() - started:.1f} s" if found else
                                         f"none ({done.stderr.strip()[-200:]}): PyTorch's CPU index")
    return found[0] if found else None


@pytest.fixture(scope="module")
def engine_image(docker: Docker, base_image: str, cpu_torch_wheel) -> Iterator[str]:
    yield docker.build_image("engine", ENGINE_TAG, f"PYTHON_IMAGE={base_image}")
    docker.prune_builds_of("engine")


@pytest.fixture(scope="module")
def trainer_image(docker: Docker, base_image: str, cpu_torch_wheel) -> Iterator[str]:
    yield docker.build_image("trainer", TRAINER_TAG, "TORCH=cpu", f"PYTHON_IMAGE={base_image}")
    docker.prune_builds_of("trainer")


def chat(base_url: str, model: str):
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    return client.chat.completions.create(model=model, messages=TICKET, max_tokens=24, temperature=0, logprobs=True,
                                          top_logprobs=5)


def test_the_engine_image_serves_the_demo_student_as_the_host_engine_does(docker, engine_image, demo_dirs):
    """The image's entrypoint and flag shape (vLLM's), the model mounted read-only, uid 10001 reading it."""
    port = free_port()
    container = docker("run", "--detach", "--network", "host", "--volume", f"{demo_dirs[0]}:/models/model:ro",
                       engine_image, "--model=/models/model", "--served-model-name=demo-student", "--host=127.0.0.1",
                       f"--port={port}", "--threads=1").stdout.strip()
    host = start_engine_server(demo_dirs[0], "demo-student")
    try:
        started = time.monotonic()
        docker.wait_until_answers(container, f"http://127.0.0.1:{port}/health", timeout_s=180)
        docker.timings["engine ready"] = f"{time.monotonic() - started:.1f} s"
        served = chat(f"http://127.0.0.1:{port}/v1", "demo-student")
        expected = chat(host.base_url, "demo-student")
    finally:
        docker("rm", "--force", container, check=False)
        stop(host.process)
    (choice,) = served.choices
    assert served.model == "demo-student" and choice.message.content
    assert choice.message.content == expected.choices[0].message.content
    tokens = choice.logprobs.content
    assert tokens and all(len(token.top_logprobs) == 5 for token in tokens)
    assert [token.token for token in tokens] == [token.token for token in expected.choices[0].logprobs.content]


def in_trainer(docker: Docker, image: str, script: str, timeout: float = 600) -> str:
    """A shell script in a trainer container with no network: nothing is downloaded at run time."""
    done = docker("run", "--rm", "--network", "none", image, "sh", "-ec", script, timeout=timeout)
    return done.stdout


def test_the_trainer_image_distils_the_demo_student_with_lora_offline(docker, trainer_image):
    """A teacher cache from the packaged demo teacher, then a KD run with a LoRA adapter, as a re-distillation job
    trains; the image's torch is the CPU build, and every extra of the trainer imports."""
    started = time.monotonic()
    out = in_trainer(docker, trainer_image, """
        package=$(python -c 'import distill, pathlib; print(pathlib.Path(distill.__file__).parent)')
        kdgate distill generate --demo 16 --out /tmp/cache
        kdgate distill train --config "$package/configs/demo_kd.yaml" student.init="$package/demo/artifacts/student" \
            cache=/tmp/cache out=/tmp/run steps=4 eval_every=4 checkpoint_every=4 batch_size=8 lora.enabled=true
        ls /tmp/run/model/adapter
        python -c 'import torch, peft, llmcompressor, kubernetes, scipy; print("torch", torch.__version__)'
        id -u
    """)
    docker.timings["trainer job"] = f"{time.monotonic() - started:.1f} s"
    assert "16 kept" in out and "student written to /tmp/run/model" in out
    assert "adapter_config.json" in out and "adapter_model.safetensors" in out
    assert f"torch {pinned_torch()}+cpu" in out
    assert out.split()[-1] == "10001"


def test_the_trainer_image_serves_its_health_check(docker, trainer_image, tmp_path):
    """Its default command, `kdgate trainer serve`, on the shipped deploy/trainer.yaml."""
    port = free_port()
    config = yaml.safe_load((ROOT / "deploy/trainer.yaml").read_text())
    config["store_url"] = "sqlite:////tmp/kdgate-trainer.sqlite3"  # the container's own, not the host's
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)  # read by uid 10001
    container = docker("run", "--detach", "--network", "host", "--volume", f"{path}:/etc/kdgate/trainer.yaml:ro",
                       f"--env=KDGATE_TRAINER_PORT={port}", "--env=KDGATE_TRAINER_HOST=127.0.0.1",
                       trainer_image).stdout.strip()
    try:
        docker.wait_until_answers(container, f"http://127.0.0.1:{port}/healthz", timeout_s=120)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        docker("rm", "--force", container, check=False)
