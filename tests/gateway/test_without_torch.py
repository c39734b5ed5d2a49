"""The gateway core installs and runs without torch: HTTP backends only, torch and transformers unimportable."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.conftest import ROOT, free_port, stop, wait_until_up

BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'tokenizers'):
            raise ImportError(f'{name} is blocked: the gateway core must not need it')
sys.meta_path.insert(0, Block())
from kdgate.cli import app
app(['serve', '--port', sys.argv[1]])
"""


def test_gateway_serves_http_backends_without_torch(engine_server):
    port = free_port()
    environment = os.environ | {
        "KDGATE_STUDENT__KIND": "http", "KDGATE_STUDENT__BASE_URL": engine_server.base_url,
        "KDGATE_STUDENT__MODEL": engine_server.model,
        "KDGATE_TEACHER__KIND": "http", "KDGATE_TEACHER__BASE_URL": engine_server.base_url,
        "KDGATE_TEACHER__MODEL": engine_server.model,
    }
    process = subprocess.Popen([sys.executable, "-c", BLOCKER, str(port)], cwd=ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=30)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "My order 12345 is late"}], "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.headers["x-kdgate-route"] == "student"
    finally:
        stop(process)
        output = process.stdout.read()
    assert "is blocked" not in output, output
