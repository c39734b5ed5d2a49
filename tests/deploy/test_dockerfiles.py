"""deploy/docker/*.Dockerfile without a Docker daemon: hadolint finds nothing at warning level or above, each image is
built in a builder stage and runs as a numeric non-root user, its command is a real `kdgate` command with flags
that exist, its health check asks a path the service serves without a key, and it installs what its role needs
(the gateway no torch, the engine the CPU torch the project pins, the trainer its extras)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import typer
from packaging.requirements import Requirement

from tests import needs
from tests.conftest import ROOT

DOCKER = ROOT / "deploy" / "docker"
IMAGES = ["gateway", "engine", "trainer"]
hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def final_stage(name: str) -> list[tuple[str, str]]:
    steps = instructions(name)
    last_from = max(index for index, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments)


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing_at_warning_level(name):
    done = subprocess.run([hadolint or needs.missing("hadolint", needs.DEV_EXTRA), "--failure-threshold", "warning", "--format", "json",
                           str(DOCKER / f"{name}.Dockerfile")], check=False, capture_output=True, text=True, timeout=60)
    findings = json.loads(done.stdout or "[]")
    serious = [finding for finding in findings if finding["level"] in ("warning", "error")]
    assert done.returncode == 0 and not serious, done.stdout + done.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_every_hadolint_ignore_says_why(name):
    lines = (DOCKER / f"{name}.Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[number - 1] if number else ""
            assert reason.startswith("#") and len(reason.split()) > 4, f"line {number + 1}: say why above it"


@pytest.mark.parametrize("name", IMAGES)
def test_built_in_a_builder_and_run_as_a_numeric_non_root_user(name):
    steps = instructions(name)
    assert sum(op == "FROM" for op, _ in steps) >= 2
    runtime = final_stage(name)
    assert any(op == "COPY" and "--from=builder" in arguments for op, arguments in runtime)
    (user,) = [arguments for op, arguments in runtime if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"
    assert not any(op == "COPY" and arguments.split()[-1].startswith("/src") for op, arguments in runtime)


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels(name):
    labels = " ".join(arguments for op, arguments in final_stage(name) if op == "LABEL")
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'org.opencontainers.image.licenses="{PYPROJECT["project"]["license"]}"' in labels
    (version,) = [arguments for op, arguments in final_stage(name) if op == "ARG" and arguments.startswith("VERSION=")]
    assert version == f"VERSION={PYPROJECT['project']['version']}"


def command_line(name: str) -> list[str]:
    """What the container runs by default: ENTRYPOINT then CMD (exec form)."""
    runtime = final_stage(name)
    entry = [exec_form(arguments) for op, arguments in runtime if op == "ENTRYPOINT"]
    (cmd,) = [exec_form(arguments) for op, arguments in runtime if op == "CMD"]
    return (entry[0] if entry else []) + cmd


@pytest.mark.parametrize("name, subcommand", [("gateway", ["serve"]), ("engine", ["engine"]),
                                              ("trainer", ["trainer", "serve"])])
def test_the_command_is_a_kdgate_command_with_real_flags(name, subcommand):
    from kdgate.cli import app

    argv = command_line(name)
    assert argv[0] == "kdgate" and argv[1:1 + len(subcommand)] == subcommand
    command: click.Command = typer.main.get_command(app)
    for word in subcommand:
        command = command.commands[word]
    known = {option for param in command.params for option in param.opts}
    flags = [word.split("=", 1)[0] for word in argv[1 + len(subcommand):] if word.startswith("--")]
    assert flags and set(flags) <= known, f"unknown to `kdgate {' '.join(subcommand)}`: {set(flags) - known}"


def health_path(name: str) -> tuple[str, str]:
    (check,) = [arguments for op, arguments in final_stage(name) if op == "HEALTHCHECK"]
    probe = exec_form(check[check.index("CMD") + 3:].strip())
    assert probe[:2] == ["python", "-c"], "the slim images have no curl: Python's urllib asks"
    (url,) = re.findall(r"'(http://127\.0\.0\.1:[^']+)'", probe[2])
    return url, probe[2]


@pytest.mark.parametrize("name", ["gateway", "engine"])
def test_the_health_check_asks_a_path_the_gateway_app_serves_without_a_key(name):
    from gateway import ops
    from gateway.auth import OPEN_PATHS

    url, _ = health_path(name)
    path = "/" + url.split("/", 3)[3]
    assert path in {route.path for route in ops.router.routes} and path in OPEN_PATHS


def test_the_trainer_health_check_asks_its_open_path():
    from distill.online.app import OPEN_PATHS

    url, _ = health_path("trainer")
    assert "/" + url.split("/", 3)[3] in OPEN_PATHS


@pytest.mark.parametrize("name, variable, default", [("gateway", "KDGATE_PORT", 8000),
                                                     ("trainer", "KDGATE_TRAINER_PORT", 8010)])
def test_the_health_check_follows_the_port_setting(name, variable, default):
    _, code = health_path(name)
    assert f"os.environ.get('{variable}', '{default}')" in code
    env = " ".join(arguments for op, arguments in final_stage(name) if op == "ENV")
    assert f"{variable}={default}" in env
    assert f"EXPOSE {default}" in {f"{op} {arguments}" for op, arguments in final_stage(name)}


def test_the_engine_listens_where_its_health_check_asks():
    url, _ = health_path("engine")
    assert f"--port={url.split(':')[2].split('/')[0]}" in command_line("engine")
    assert "--host=0.0.0.0" in command_line("engine")


def pip_installs(name: str) -> list[str]:
    runs = " && ".join(arguments for op, arguments in instructions(name) if op == "RUN")
    return [part.split("pip install", 1)[1] for part in runs.split("&&") if "pip install" in part]


def test_the_gateway_installs_the_core_package_only():
    (install,) = pip_installs("gateway")
    assert shlex.split(install)[-1] == "."  # no extra: the core dependencies, which hold no torch
    assert not any(Requirement(spec).name == "torch" for spec in PYPROJECT["project"]["dependencies"])
    assert not any("torch" in arguments for _, arguments in instructions("gateway"))


def engine_torch_range():
    return next(Requirement(spec) for spec in PYPROJECT["project"]["optional-dependencies"]["engine"]
                if Requirement(spec).name == "torch")


def cpu_torch_step(name: str) -> str:
    """The RUN that makes /opt/venv with the CPU build of torch."""
    (step,) = [arguments for op, arguments in instructions(name) if op == "RUN" and "download.pytorch.org" in arguments]
    return step


def test_the_engine_installs_the_pinned_cpu_torch_before_its_extra():
    torch_install, engine_install = pip_installs("engine")
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    # a CPU wheel on disk (deploy/docker/wheels/) wins over the index, and is the same pinned version
    assert '--find-links /wheels "torch==${TORCH_VERSION}+cpu"' in torch_install
    assert "--mount=type=bind,source=deploy/docker/wheels,target=/wheels" in cpu_torch_step("engine")
    assert (ROOT / "deploy" / "docker" / "wheels").is_dir()
    (pin,) = [arguments.split("=", 1)[1] for op, arguments in instructions("engine")
              if op == "ARG" and arguments.startswith("TORCH_VERSION=")]
    assert engine_torch_range().specifier.contains(pin), f"torch {pin} is outside the engine extra's range"
    assert shlex.split(engine_install)[-1] == ".[engine]"


def test_the_trainer_installs_its_extras_over_the_torch_it_starts_from():
    install = pip_installs("trainer")[-1]
    extras = re.search(r"\.\[([a-z,]+)\]", install).group(1).split(",")
    assert set(extras) == {"train", "quantize", "kubernetes"}
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "--constraint /tmp/torch-constraint.txt" in install
    (base,) = [arguments for op, arguments in instructions("trainer") if op == "ARG"
               and arguments.startswith("TORCH_IMAGE=")]
    torch_version = re.search(r"pytorch/pytorch:([\d.]+)-cuda", base).group(1)
    assert engine_torch_range().specifier.contains(torch_version)


def test_the_trainer_cpu_variant_installs_torch_as_the_engine_does():
    """The same step in both files (so BuildKit builds it once for both) and the same pinned version; the CUDA
    variant stays the default."""
    assert cpu_torch_step("trainer") == cpu_torch_step("engine")
    pins = {name: [arguments for op, arguments in instructions(name) if op == "ARG"
                   and arguments.startswith("TORCH_VERSION=")] for name in ("engine", "trainer")}
    assert pins["engine"] == pins["trainer"] and len(pins["engine"]) == 1
    assert ("ARG", "TORCH=cuda") in instructions("trainer")
    froms = [arguments for op, arguments in instructions("trainer") if op == "FROM"]
    assert "torch-${TORCH} AS builder" in froms and froms[-1] == "runtime-${TORCH}"


@pytest.mark.parametrize("name", IMAGES)
def test_copied_paths_exist_and_local_leftovers_stay_out(name):
    for op, arguments in instructions(name):
        if op == "COPY" and "--from=" not in arguments:
            for source in [word for word in arguments.split() if not word.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().split()
    for leftover in (".venv", ".git", "runs", "var", "distill/demo/artifacts/cache", "**/__pycache__"):
        assert leftover in ignored
    # the same patterns, but the torch images mount deploy/docker/wheels/ (a 190 MB wheel the gateway never sends)
    assert ("deploy/docker/wheels" in ignored) == (name == "gateway")
    assert patterns(name) - {"deploy/docker/wheels"} == patterns("gateway") - {"deploy/docker/wheels"}


def patterns(name: str) -> set[str]:
    lines = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def test_the_images_copy_every_package_the_project_ships():
    packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    for name in IMAGES:
        copied = {Path(arguments.split()[0]).name for op, arguments in instructions(name)
                  if op == "COPY" and "--from=" not in arguments}
        assert packages <= copied, f"{name}: missing {packages - copied}"
