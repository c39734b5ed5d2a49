"""The Grafana dashboard: generated from its builder, datasource templated, and every query names a metric that
really exists (in a gateway scrape, in the kdgate recording rules, or in vLLM's V1 exporter)."""

from __future__ import annotations

import json
import re
import runpy

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import needs
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


def test_the_cost_panel_shows_actual_against_all_teacher_per_1000_requests(tmp_path):
    """The panel's queries, run by promtool over two replicas' counters, give the dollars per 1,000 answered
    requests: spent (split by route) and all-teacher."""
    import subprocess

    promtool = needs.tool("promtool")
    dashboard = json.loads((GRAFANA / "kdgate.json").read_text())
    panel = next(panel for panel in dashboard["panels"] if panel["title"].startswith("Cost per 1,000 requests"))
    assert panel["fieldConfig"]["defaults"]["unit"] == "currencyUSD"
    legends = {target["legendFormat"]: target["expr"] for target in panel["targets"]}
    assert set(legends) == {"actual", "all-teacher", "actual, {{route}} part"}
    series = [  # per minute: 1,000 answered requests, $0.125 spent, $0.5 had the teacher answered them all
        ('kdgate_requests_total{instance="a", route="student", outcome="ok"}', 400),
        ('kdgate_requests_total{instance="a", route="teacher", outcome="ok"}', 100),
        ('kdgate_requests_total{instance="a", route="student", outcome="error"}', 8),
        ('kdgate_requests_total{instance="b", route="student", outcome="ok"}', 500),
        ('kdgate_cost_dollars_total{instance="a", route="student", backend="student"}', 0.015625),
        ('kdgate_cost_dollars_total{instance="a", route="teacher", backend="student"}', 0.0078125),
        ('kdgate_cost_dollars_total{instance="a", route="teacher", backend="teacher"}', 0.0625),
        ('kdgate_cost_dollars_total{instance="a", route="shadow", backend="teacher"}', 0.0078125),
        ('kdgate_cost_dollars_total{instance="b", route="student", backend="student"}', 0.03125),
        ('kdgate_cost_all_teacher_dollars_total{instance="a", route="student"}', 0.1875),
        ('kdgate_cost_all_teacher_dollars_total{instance="a", route="teacher"}', 0.0625),
        ('kdgate_cost_all_teacher_dollars_total{instance="b", route="student"}', 0.25),
    ]
    expected = {
        "actual": [{"labels": legends["actual"], "value": 0.125}],
        "all-teacher": [{"labels": legends["all-teacher"], "value": 0.5}],
        "actual, {{route}} part": [{"labels": f'{{route="{route}"}}', "value": value} for route, value in
                                   (("shadow", 0.0078125), ("student", 0.046875), ("teacher", 0.0703125))],
    }
    test = {"rule_files": [str(ROOT / "deploy" / "prometheus" / "rules" / "kdgate.yml")],
            "evaluation_interval": "30s",
            "tests": [{"interval": "1m",
                       "input_series": [{"series": name, "values": f"0+{step}x30"} for name, step in series],
                       "promql_expr_test": [{"expr": expr, "eval_time": "20m", "exp_samples": expected[legend]}
                                            for legend, expr in legends.items()]}]}
    path = tmp_path / "cost_panel_test.yml"
    path.write_text(yaml.safe_dump(test))
    done = subprocess.run([promtool, "test", "rules", str(path)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
