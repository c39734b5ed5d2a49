"""The layout's import rules (DESIGN.md): kdgate over the load tests over the two services (gateway, distill) over
the shared runtime over the routing logic, router free of web and model libraries, no cycles inside a package.
The rules are import-linter contracts in pyproject.toml; these tests run them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kdgate", "loadtests", "gateway", "distill", "runtime", "router")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_import_rules_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_service_imported_from_the_runtime_breaks_them(tmp_path):
    """The check can fail: the same tree with the runtime importing the gateway (the cycle the layer removed)."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("artifacts", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    factory = tmp_path / "runtime" / "backends" / "factory.py"
    factory.write_text(factory.read_text() + "\nfrom gateway.metrics import GatewayMetrics  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0 and "runtime.backends.factory -> gateway.metrics" in done.stdout, done.stdout[-3000:]
