"""The Docker daemon and the Debian-made Python base image, shared by the image tests (test_images.py: the gateway;
test_torch_images.py: the engine and the trainer); one daemon for the session, which prints each step's time."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import needs, summary
from tests.conftest import ROOT
from tests.deploy.docker_daemon import (
    BASE_TAG,
    Docker,
    answers,
    buildkit_command,
    local_ca_certificates,
    start_dockerd,
    stop_dockerd,
    unmount_below,
)


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
    if bound.timings:
        costs = " | ".join(f"{step} {took}" for step, took in bound.timings.items())
        summary.add(request.config, f"test_images: {costs}")
    if process:
        stop_dockerd(process)
        unmount_below(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


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
