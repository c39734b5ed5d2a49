"""Prometheus artefacts checked with Debian's real `promtool`: config, rules, rule unit tests (firing and not
firing for every alert), and the gateway's own /metrics scrape."""

from __future__ import annotations

import subprocess

import httpx

from tests import needs
from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([needs.tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_config_and_rules_are_valid():
    done = run("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    for rules in sorted((PROMETHEUS / "rules").glob("*.yml")):
        done = run("check", "rules", str(rules))
        assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass():
    tests = sorted((PROMETHEUS / "tests").glob("*_test.yml"))
    assert tests
    done = run("test", "rules", *map(str, tests))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    import yaml

    alerts = {rule["alert"] for path in (PROMETHEUS / "rules").glob("*.yml")
              for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    cases = [case for path in (PROMETHEUS / "tests").glob("*_test.yml")
             for test in yaml.safe_load(path.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    for alert in alerts:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert} needs a firing and a not-firing unit test"


KEPT = {"namespace", "kdgate_release", "served_model"}  # what every aggregation keeps: a deployment's own pair


def test_every_rule_aggregates_per_release():
    """Each sum keeps `namespace`, `kdgate_release` and `served_model` and each join matches on them, so two
    releases, or two pairs behind one gateway, scraped by one Prometheus are never summed together (the unit tests
    show it for the drift, error and shadow alerts); a rule may keep more (the drift sample's `student_version`)."""
    import re

    import yaml

    rules = [rule for path in (PROMETHEUS / "rules").glob("*.yml")
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    for rule in rules:
        name = rule.get("record") or rule["alert"]
        for operator, labels in re.findall(r"\b(sum|avg|min|max|count)\b\s*(?:by\s*\(([^)]*)\))?", rule["expr"]):
            assert KEPT <= {label.strip() for label in labels.split(",")}, \
                f"{name}: `{operator}` must keep namespace, kdgate_release and served_model"
        for labels in re.findall(r"\bon\s*\(([^)]*)\)", rule["expr"]):
            assert KEPT <= {label.strip() for label in labels.split(",")}, name


def test_the_gateway_scrape_passes_promtool_lint(gateway):
    httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
        "model": "kdgate-demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    scrape = httpx.get(f"{gateway.url}/metrics").text
    done = run("check", "metrics", stdin=scrape)
    assert done.returncode == 0, done.stdout + done.stderr
