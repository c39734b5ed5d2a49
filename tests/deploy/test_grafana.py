"""The Grafana dashboard: generated from its builder, datasource templated, and every query names a metric that
really exists (in a gateway scrape, in the kdgate recording rules, or in vLLM's V1 exporter)."""

from __future__ import annotations

import json
import re
import runpy

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
# vLLM V1's Prometheus metrics used by the dashboard (vllm/v1/metrics/loggers.py; docs/design/metrics.md).
VLLM_METRICS = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                "vllm:e2e_request_latency_seconds", "vllm:generation_tokens", "vllm:prompt_tokens",
                "vllm:num_preemptions", "vllm:request_success"}
SUFFIXES = ("_bucket", "_sum", "_count", "_total")
NAME = re.compile(r"\b(?:kdgate|vllm)[a-zA-Z0-9_:]*")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_committed_dashboard_matches_its_builder():
    builder = runpy.run_path(str(GRAFANA / "build_dashboard.py"))
    assert json.loads((GRAFANA / "kdgate.json").read_text()) == builder["dashboard"](), \
        "kdgate.json is stale: run python deploy/grafana/build_dashboard.py and commit it"


def test_every_panel_queries_a_metric_that_exists(gateway):
    dashboard = json.loads((GRAFANA / "kdgate.json").read_text())
    exported = {family(metric.name) for metric in
                text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)}
    recorded = {rule["record"] for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")
                for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = NAME.findall(target["expr"])
            assert names, f"{panel['title']}: no kdgate or vLLM metric in {target['expr']}"
            for name in names:
                known = name in recorded or family(name) in exported or family(name) in VLLM_METRICS
                assert known, f"{panel['title']}: `{name}` is exported by neither the gateway, its rules nor vLLM"
