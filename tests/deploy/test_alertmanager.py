"""deploy/alertmanager/alertmanager.yml is a valid Alertmanager configuration (Debian's `amtool`) that routes the
drift alerts to the trainer's webhook with a bearer token, and nothing else."""

from __future__ import annotations

import subprocess

import yaml

from tests import needs
from tests.conftest import ROOT

CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def test_amtool_accepts_the_configuration(tmp_path):
    token = tmp_path / "token"
    token.write_text("kdg-example\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.read_text().replace("/etc/alertmanager/kdgate-trainer-token", str(token)))
    done = subprocess.run([needs.tool("amtool"), "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_drift_alerts_go_to_the_trainer_with_a_bearer_token():
    config = yaml.safe_load(CONFIG.read_text())
    (route,) = [route for route in config["route"]["routes"] if route["receiver"] == "kdgate-trainer"]
    assert route["matchers"] == ['action="redistill"']
    (receiver,) = [receiver for receiver in config["receivers"] if receiver["name"] == "kdgate-trainer"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"].endswith("/v1/alerts") and webhook["send_resolved"] is False
    assert webhook["http_config"]["authorization"]["type"] == "Bearer"
    rules = (ROOT / "deploy" / "prometheus" / "rules" / "kdgate.yml").read_text()
    assert "action: redistill" in rules  # the label the route matches is the one the drift rule sets
