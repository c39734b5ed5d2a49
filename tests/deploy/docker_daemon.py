"""A Docker daemon for the image tests: the one DOCKER_HOST (or the default socket) names, else a dockerd started as
root with its images kept under DATA_ROOT, and the CLI that builds with BuildKit on it (tests/deploy/conftest.py
holds the fixtures)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import needs
from tests.conftest import ROOT

BASE_TAG = "kdgate-python-base:3.11-bookworm"
SOURCE = "https://github.com/kdgate/kdgate"
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

    def build_image(self, name: str, tag: str, *build_args: str, timeout: float = 900) -> str:
        """deploy/docker/<name>.Dockerfile built from the repository root with these --build-arg NAME=VALUE, its OCI
        revision and source set; the step's time is kept."""
        started = time.monotonic()
        args = [*build_args, f"REVISION={git_revision()}", f"SOURCE={SOURCE}"]
        done = subprocess.run([*self.build, "--file", f"deploy/docker/{name}.Dockerfile", "--tag", tag,
                               *[word for arg in args for word in ("--build-arg", arg)], "."],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        self.timings[f"{name} image"] = f"{time.monotonic() - started:.1f} s"
        return tag

    def prune_builds_of(self, name: str) -> None:
        """Each build leaves the previous one's image untagged: drop those, and only those."""
        self("image", "prune", "--force", "--filter", f"label=org.opencontainers.image.title=kdgate-{name}",
             check=False)

    def wait_until_answers(self, container: str, url: str, timeout_s: float = 90) -> None:
        """Until GET url is 200; fails with the container's log if it exits or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
                break
            time.sleep(0.25)
        logs = self("logs", container, check=False)
        pytest.fail(f"container {container[:12]} did not answer {url} within {timeout_s:.0f} s; its log ends:\n"
                    f"{(logs.stdout + logs.stderr)[-3000:]}", pytrace=False)


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


def unmount_below(folder: Path) -> None:
    """dockerd leaves its default network namespace (exec-root/netns/default) mounted after it stops."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{folder}/")), key=len, reverse=True):
        subprocess.run(["umount", mount], capture_output=True, timeout=30)


def local_ca_certificates() -> str:
    """Trust anchors this machine's administrator added (Debian keeps them here): a proxy that signs TLS with its own
    CA is trusted by pip on the host, and must be inside the image for pip in the build to reach PyPI."""
    return " ".join(sorted(glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True)))


def git_revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
