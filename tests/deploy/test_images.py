"""deploy/docker/gateway.Dockerfile built and run for real: the image answers the official `openai` SDK from a container.

A Docker daemon (Debian's docker.io; started for the session, and stopped after, when none answers: conftest.py)
builds the gateway image with BuildKit on a base made from Debian's packages by deploy/docker/debian-base.sh (the
Dockerfile's default, Docker Hub's python:3.11-slim-bookworm, needs a registry that CI machines may not reach). A
container from it reads the shipped deploy/kdgate-vllm.yaml with the backends, port and /metrics token overridden by
KDGATE_ variables, and fronts two `kdgate engine` servers on the host (the image has no torch: it serves over HTTP,
as in front of vLLM). Cold on 2 cores (no base image, empty build cache) the module took 73 s and 154 s (the base
image 90 s of the latter); 20 s once the base image is made. It prints each step's time.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port, start_engine_server, stop
from tests.deploy.docker_daemon import SOURCE, Docker, git_revision

pytestmark = pytest.mark.slow

GATEWAY_TAG = "kdgate-gateway:test"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONFIG = ROOT / "deploy" / "kdgate-vllm.yaml"


@pytest.fixture(scope="module")
def gateway_image(docker: Docker, base_image: str) -> Iterator[str]:
    yield docker.build_image("gateway", GATEWAY_TAG, f"PYTHON_IMAGE={base_image}")
    docker.prune_builds_of("gateway")


@dataclass
class Gateway:
    container: str
    base_url: str
    key: str
    metrics_token: str


def keys_file(folder: Path, key: str) -> Path:
    path = folder / "keys.yaml"
    path.write_text(yaml.safe_dump([{"name": "sdk-test", "sha256": hashlib.sha256(key.encode()).hexdigest()}]))
    path.chmod(0o644)  # read in the container by uid 10001
    return path


@pytest.fixture(scope="module")
def gateway_container(docker: Docker, gateway_image: str, demo_dirs, engine_server,
                      tmp_path_factory) -> Iterator[Gateway]:
    """The image's own command (`kdgate serve --config /etc/kdgate/config.yaml`) on the host's network, so the
    engines on the host's loopback are its backends."""
    student = start_engine_server(demo_dirs[0], "demo-student")
    key, metrics_token = f"sk-{secrets.token_urlsafe(24)}", secrets.token_urlsafe(24)
    keys = keys_file(tmp_path_factory.mktemp("gateway-image"), key)
    port = free_port()
    settings = {"KDGATE_PORT": port,
                "KDGATE_STUDENT__BASE_URL": student.base_url, "KDGATE_STUDENT__MODEL": student.model,
                "KDGATE_TEACHER__BASE_URL": engine_server.base_url, "KDGATE_TEACHER__MODEL": engine_server.model,
                "KDGATE_AUTH__METRICS_SHA256": hashlib.sha256(metrics_token.encode()).hexdigest()}
    started = time.monotonic()
    container = docker("run", "--detach", "--network", "host",
                       "--volume", f"{CONFIG}:/etc/kdgate/config.yaml:ro", "--volume", f"{keys}:/etc/kdgate/keys.yaml:ro",
                       *[f"--env={name}={value}" for name, value in settings.items()], gateway_image).stdout.strip()
    base_url = f"http://127.0.0.1:{port}"
    try:
        docker.wait_until_answers(container, f"{base_url}/readyz")
        docker.timings["container ready"] = f"{time.monotonic() - started:.1f} s"
        yield Gateway(container=container, base_url=base_url, key=key, metrics_token=metrics_token)
    finally:
        docker("rm", "--force", container, check=False)
        stop(student.process)


def test_the_gateway_image_answers_the_openai_sdk_from_a_container(docker, gateway_container):
    from openai import OpenAI

    served_model = yaml.safe_load(CONFIG.read_text())["served_model"]
    client = OpenAI(base_url=f"{gateway_container.base_url}/v1", api_key=gateway_container.key, max_retries=0)
    started = time.monotonic()
    response = client.chat.completions.with_raw_response.create(
        model=served_model, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Order #58514: the SmartHub Pro charged me twice. Regards, Kofi Silva"}])
    docker.timings["request"] = f"{time.monotonic() - started:.2f} s"
    assert response.http_response.status_code == 200
    completion = response.parse()
    route = response.headers["x-kdgate-route"]
    assert route in ("student", "teacher")
    assert completion.model_extra["kdgate"]["route"] == route
    assert completion.model == served_model and completion.choices[0].message.content

    ready = httpx.get(f"{gateway_container.base_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["backends"] == {"student": {"ready": True}, "teacher": {"ready": True}}

    assert httpx.get(f"{gateway_container.base_url}/metrics", timeout=5).status_code == 401
    metrics = httpx.get(f"{gateway_container.base_url}/metrics", timeout=5,
                        headers={"authorization": f"Bearer {gateway_container.metrics_token}"})
    assert metrics.status_code == 200
    counted = [line for line in metrics.text.splitlines()
               if line.startswith("kdgate_requests_total{") and f'route="{route}"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, metrics.text[:2000]


def test_the_image_runs_as_a_non_root_user_and_carries_its_oci_labels(docker, gateway_image, gateway_container):
    (image,) = json.loads(docker("image", "inspect", gateway_image).stdout)
    assert image["Config"]["User"] == "10001:10001"
    assert docker("exec", gateway_container.container, "id", "-u").stdout.strip() == "10001"
    labels = image["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "kdgate-gateway"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["version"]
    assert labels["org.opencontainers.image.revision"] == git_revision()
    assert labels["org.opencontainers.image.source"] == SOURCE
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["license"]
    assert labels["org.opencontainers.image.description"]
    # the gateway fronts its models over HTTP: its image carries no torch
    probe = docker("exec", gateway_container.container, "python", "-c",
                   "import importlib.util; print(importlib.util.find_spec('torch') is None)")
    assert probe.stdout.strip() == "True"
