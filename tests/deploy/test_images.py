"""deploy/docker/gateway.Dockerfile built and run for real: the image answers the official `openai` SDK from a container.

A Docker daemon (Debian's docker.io; started here, and stopped after, when none answers) builds the gateway image
with BuildKit on a base made from Debian's packages by deploy/docker/debian-base.sh (the Dockerfile's default,
Docker Hub's python:3.11-slim-bookworm, needs a registry that CI machines may not reach). A container from it reads
the shipped deploy/kdgate-vllm.yaml with the backends, port and /metrics token overridden by KDGATE_ variables, and
fronts two `kdgate engine` servers on the host (the image has no torch: it serves over HTTP, as in front of vLLM).
Cold on 2 cores (no base image, empty build cache) the module took 73 s and 154 s (the base image 90 s of the
latter); 20 s once the base image is made. It prints each step's time.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests import needs
from tests.conftest import ROOT, free_port, start_engine_server, stop

pytestmark = pytest.mark.slow

BASE_TAG = "kdgate-python-base:3.11-bookworm"
GATEWAY_TAG = "kdgate-gateway:test"
SOURCE = "https://github.com/kdgate/kdgate"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONFIG = ROOT / "deploy" / "kdgate-vllm.yaml"
# The daemon this module starts keeps its images here, so a later run finds the base image (about a minute to make).
DATA_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdgate" / "docker"
DAEMON_START_S = 60
INSTALL_DOCKER = "apt-get install docker.io and run the tests as root, which dockerd needs (.ci/run installs it)"


@dataclass
class Docker:
    """The docker CLI bound to one daemon, and the command that builds with BuildKit on it."""

    cli: str
    env: dict[str, str]
    build: list[str]
    timings: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}",
                        pytrace=False)
        return done


def answers(cli: str, env: dict[str, str]) -> bool:
    done = subprocess.run([cli, "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
                          text=True, timeout=10)
    return done.returncode == 0 and bool(done.stdout.strip())


def buildkit_command(env: dict[str, str]) -> tuple[str, list[str]]:
    """A CLI that builds with BuildKit, which reads each Dockerfile's own ignore file (the legacy builder does not).

    A CLI with the buildx plugin builds through it; a CLI older than 23 (Debian docker.io's /usr/bin/docker) has its
    own BuildKit client under DOCKER_BUILDKIT=1; a newer one without buildx cannot build with BuildKit at all.
    """
    for cli in dict.fromkeys(filter(None, [shutil.which("docker"), shutil.which("docker", path="/usr/bin")])):
        if subprocess.run([cli, "buildx", "version"], env=env, capture_output=True, timeout=30).returncode == 0:
            return cli, [cli, "buildx", "build", "--load"]
        client = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], env=env, capture_output=True,
                                text=True, timeout=30).stdout.strip()
        if client.split(".")[0].isdigit() and int(client.split(".")[0]) < 23:
            return cli, [cli, "build"]
    needs.missing("a docker CLI that builds with BuildKit (the buildx plugin, or Debian docker.io's own CLI)",
                  INSTALL_DOCKER)


def start_dockerd(env: dict[str, str], run_dir: Path) -> subprocess.Popen:
    dockerd = needs.tool("dockerd")
    if os.geteuid() != 0:
        needs.missing("a Docker daemon (none answers, and dockerd needs root to start one)", INSTALL_DOCKER)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "dockerd.log").open("w")
    process = subprocess.Popen([dockerd, "--data-root", str(DATA_ROOT), "--exec-root", str(run_dir / "exec"),
                                "--pidfile", str(run_dir / "dockerd.pid"), "--host", env["DOCKER_HOST"]],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + DAEMON_START_S
    while process.poll() is None and time.monotonic() < deadline:
        if answers(needs.tool("docker"), env):
            return process
        time.sleep(0.25)
    how = (f"dockerd exited with {process.returncode}" if process.poll() is not None
           else f"dockerd did not answer within {DAEMON_START_S} s")
    stop_dockerd(process)
    unmount_below(run_dir)
    tail = (run_dir / "dockerd.log").read_text()[-2000:]
    shutil.rmtree(run_dir, ignore_errors=True)
    needs.missing(f"a Docker daemon ({how}; its log ends:\n{tail})", INSTALL_DOCKER)


def stop_dockerd(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def docker(request) -> Iterator[Docker]:
    """The daemon DOCKER_HOST (or the default socket) names, else a dockerd started for the session."""
    needs.tool("docker")
    env = os.environ | {"DOCKER_BUILDKIT": "1"}
    process = None
    run_dir = Path(tempfile.mkdtemp(prefix="kdgate-dockerd-"))  # short: a unix socket path has at most 107 bytes
    started = time.monotonic()
    if not answers(needs.tool("docker"), env):
        env["DOCKER_HOST"] = f"unix://{run_dir / 'docker.sock'}"
        try:
            process = start_dockerd(env, run_dir)
        finally:
            if process is None:
                shutil.rmtree(run_dir, ignore_errors=True)
    cli, build = buildkit_command(env)
    bound = Docker(cli=cli, env=env, build=build)
    bound.timings["daemon"] = f"{time.monotonic() - started:.1f} s ({'started here' if process else 'running'})"
    yield bound
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture and bound.timings:
        with capture.global_and_fixture_disabled():  # printed even when output is captured
            reporter.write_line("\ntest_images: " + " | ".join(f"{step} {took}" for step, took in bound.timings.items()))
    if process:
        stop_dockerd(process)
        unmount_below(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """dockerd leaves its default network namespace (exec-root/netns/default) mounted after it stops."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{folder}/")), key=len, reverse=True):
        subprocess.run(["umount", mount], capture_output=True, timeout=30)


def local_ca_certificates() -> str:
    """Trust anchors this machine's administrator added (Debian keeps them here): a proxy that signs TLS with its own
    CA is trusted by pip on the host, and must be inside the image for pip in the build to reach PyPI."""
    return " ".join(sorted(glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True)))


@pytest.fixture(scope="session")
def base_image(docker: Docker) -> str:
    if docker("image", "inspect", BASE_TAG, check=False).returncode == 0:
        docker.timings["base image"] = "present"
        return BASE_TAG
    needs.tool("mmdebstrap")
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "deploy" / "docker" / "debian-base.sh"), BASE_TAG], cwd=ROOT,
                          env=docker.env | {"EXTRA_CA_CERTS": local_ca_certificates(),
                                            "PATH": f"{Path(docker.cli).parent}{os.pathsep}{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    docker.timings["base image"] = f"{time.monotonic() - started:.1f} s (built)"
    return BASE_TAG


def git_revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def gateway_image(docker: Docker, base_image: str) -> Iterator[str]:
    started = time.monotonic()
    done = subprocess.run([*docker.build, "--file", "deploy/docker/gateway.Dockerfile", "--tag", GATEWAY_TAG,
                           "--build-arg", f"PYTHON_IMAGE={base_image}", "--build-arg", f"REVISION={git_revision()}",
                           "--build-arg", f"SOURCE={SOURCE}", "."],
                          cwd=ROOT, env=docker.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    docker.timings["gateway image"] = f"{time.monotonic() - started:.1f} s"
    yield GATEWAY_TAG
    # each build leaves the previous one's image untagged: drop those, and only those
    docker("image", "prune", "--force", "--filter", "label=org.opencontainers.image.title=kdgate-gateway",
           check=False)


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
        wait_until_ready(docker, container, base_url)
        docker.timings["container ready"] = f"{time.monotonic() - started:.1f} s"
        yield Gateway(container=container, base_url=base_url, key=key, metrics_token=metrics_token)
    finally:
        docker("rm", "--force", container, check=False)
        stop(student.process)


def wait_until_ready(docker: Docker, container: str, base_url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            break
        time.sleep(0.25)
    logs = docker("logs", container, check=False)
    pytest.fail(f"the gateway container was not ready within {timeout_s:.0f} s; its log ends:\n"
                f"{(logs.stdout + logs.stderr)[-3000:]}", pytrace=False)


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
