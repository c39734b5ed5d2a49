"""What a test needs from the machine, and what happens when it is not there.

Under CI (`CI=true`, as `.ci/run` runs) a missing service binary or dev dependency fails the test with what to
install: a CI run that skipped the PostgreSQL or Prometheus tests would go green having checked nothing. Elsewhere
it is a skip whose reason says what to install, and the run ends with the skips counted by reason (tests/conftest.py).
Only a test that needs a GPU may skip under CI; its reason starts with `GPU_REASON`.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

GPU_REASON = "needs a CUDA GPU"
DEV_EXTRA = "./dev setup dev (pip install -e '.[dev]')"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str, install: str) -> NoReturn:
    """Fail under CI, skip elsewhere; both say what is missing and how to install it."""
    message = f"{what} is missing: {install}"
    if in_ci():
        pytest.fail(f"CI runs every test that needs no GPU, and {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def binary(*names: str, install: str) -> str:
    """The path of the first of `names` on PATH."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing(" or ".join(f"`{name}`" for name in names), install)


# The Debian package that ships each service binary the tests start (.ci/run installs them).
DEBIAN = {"promtool": "prometheus", "prometheus": "prometheus", "amtool": "prometheus-alertmanager",
          "prometheus-alertmanager": "prometheus-alertmanager", "alertmanager": "prometheus-alertmanager",
          "redis-server": "redis-server", "docker-compose": "docker-compose", "initdb": "postgresql",
          "postgres": "postgresql", "dnsmasq": "dnsmasq-base", "docker": "docker.io", "dockerd": "docker.io",
          "mmdebstrap": "mmdebstrap"}


# Names a binary goes by: Debian installs Alertmanager as `prometheus-alertmanager`, upstream as `alertmanager`;
# dnsmasq is in /usr/sbin, which is not on a Debian user's PATH.
ALIASES = {"alertmanager": ("prometheus-alertmanager", "alertmanager"), "dnsmasq": ("dnsmasq", "/usr/sbin/dnsmasq")}


def tool(name: str) -> str:
    """A Debian service binary's path."""
    return binary(*ALIASES.get(name, (name,)), install=f"apt-get install {DEBIAN[name]} (.ci/run installs it)")


def requires(*names: str):
    """A module's autouse fixture: every test in it needs these service binaries (`_needs = requires(...)`)."""
    @pytest.fixture(autouse=True, scope="module")
    def _requires_tools() -> None:
        for name in names:
            tool(name)
    return _requires_tools


def module(name: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"the Python module `{name}` ({error})", install)


def gpu() -> None:
    """Skip (under CI too) unless torch sees a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip(GPU_REASON)


def allowed_under_ci(reason: str) -> bool:
    return reason.startswith(GPU_REASON)
