"""The gateway as deploy/kdgate-vllm.yaml configures it, in front of the tier's real vLLM servers.

The file's routing (student first, handoff to the teacher below p=0.9), shadow and HTTP settings are kept; what a
test on one machine must change is overridden: loopback, the servers' URLs and model ids, the README's model name,
a shadow store of the test's own at a sample rate of 1 (every student answer scored), no keys file.
"""

from __future__ import annotations

from pathlib import Path

from gateway.settings import GatewaySettings, load_settings
from tests.conftest import ROOT
from tests.vllm_servers import VllmServers

DEPLOY_FILE = ROOT / "deploy" / "kdgate-vllm.yaml"


def vllm_gateway_settings(servers: VllmServers, store: Path, **overrides) -> GatewaySettings:
    given = {
        "host": "127.0.0.1", "port": 0, "served_model": "kdgate-demo",
        "student": {"kind": "http", "base_url": servers.student.base_url, "model": servers.student.name},
        "teacher": {"kind": "http", "base_url": servers.teacher.base_url, "model": servers.teacher.name},
        "shadow": {"sample_rate": 1.0, "store_url": f"sqlite:///{store}"},
        "auth": {"keys_file": None},
    }
    for key, value in overrides.items():
        given[key] = given[key] | value if isinstance(value, dict) and isinstance(given.get(key), dict) else value
    return load_settings(DEPLOY_FILE, **given)
