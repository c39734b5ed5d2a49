"""`./dev`, the README's two commands: torch comes from PyTorch's CPU wheel index before the public one (on the
public index alone, Linux torch is a CUDA build with several GB of nvidia-* wheels), and `./dev serve` installs only
what serving the demo needs, not the test extra (trl, llm-compressor, schemathesis, the Helm SDK)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess

import pytest

from tests.conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PUBLIC_INDEX = "https://pypi.org/simple"


def cuda_wheels(distributions) -> list[str]:
    """nvidia-* wheels that come with a CUDA torch (nvidia-ml-py, NVML's Python binding, is not one of them)."""
    names = (d.metadata["Name"].lower() for d in distributions)
    return sorted(name for name in names if name.startswith("nvidia-") and name != "nvidia-ml-py")


def test_the_torch_install_asks_the_cpu_index_first():
    script = (ROOT / "dev").read_text()
    assert f"TORCH_INDEX=${{KDGATE_TORCH_INDEX:-{CPU_INDEX}}}" in script
    assert f"PUBLIC_INDEX={PUBLIC_INDEX}" in script
    (command,) = [line for line in script.splitlines() if "pip install" in line and '"$TORCH"' in line]
    assert re.search(r'--index-url "\$TORCH_INDEX" --extra-index-url "\$PUBLIC_INDEX" "\$TORCH"', command), command
    # the public index alone only when the CPU index cannot be reached, and then the result is checked
    assert "TORCH_INDEX=$PUBLIC_INDEX" in script and "check_no_cuda" in script


def test_the_torch_the_suite_runs_on_is_a_cpu_build():
    import torch

    assert torch.version.cuda is None, torch.__version__
    assert torch.__version__.endswith("+cpu"), torch.__version__
    assert cuda_wheels(metadata.distributions()) == []


def test_dev_with_no_verb_prints_its_usage_and_exits_2():
    done = subprocess.run(["./dev"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ./dev serve")
    done = subprocess.run(["./dev", "setup", "everything"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "./dev setup [serve|dev]" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_serve_environment_is_cpu_only_and_without_the_test_extra(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "KDGATE_VENV": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["./dev", "setup", "serve"], cwd=ROOT, capture_output=True, text=True, timeout=840, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # PyTorch's CPU index first; where it cannot be reached (this machine's network reaches PyPI only), said once,
    # and torch from the public index and pip's own settings (here a CPU wheel on disk), checked below
    unreachable = f"dev: PyTorch's CPU index ({CPU_INDEX}) cannot be reached"
    source = PUBLIC_INDEX if unreachable in done.stdout else CPU_INDEX
    assert f"dev: installing torch==2.13.0 from {source} (then {PUBLIC_INDEX})" in done.stdout, done.stdout
    python = str(venv / "bin" / "python")
    facts = subprocess.run([python, "-c", "import importlib.metadata as m, torch; print(torch.__version__); "
                            "print(torch.version.cuda); print(' '.join(d.metadata['Name'].lower() "
                            "for d in m.distributions()))"], capture_output=True, text=True, timeout=120, check=True)
    version, cuda, names = facts.stdout.splitlines()
    assert version.endswith("+cpu") and cuda == "None"
    installed = set(names.split())
    assert [name for name in installed if name.startswith("nvidia-") and name != "nvidia-ml-py"] == []
    assert {"transformers", "fastapi", "kdgate"} <= installed
    assert not installed & {"trl", "llmcompressor", "schemathesis", "pytest", "helm-python-sdk"}
    # xgrammar without triton, its GPU kernels: the environment was 2.2 GB with it, 1.3 GB without
    assert "xgrammar" in installed and "triton" not in installed
    assert "dev: removing triton" in done.stdout
    # the serve environment is enough to serve: the CLI loads with every command
    assert subprocess.run([str(venv / "bin" / "kdgate"), "serve", "--help"], capture_output=True, timeout=120,
                          ).returncode == 0
    # and a second run finds it installed: no pip at all
    again = subprocess.run(["./dev", "setup", "serve"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=env)
    assert again.returncode == 0 and "installing" not in again.stdout
