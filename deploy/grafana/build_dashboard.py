"""Writes deploy/grafana/kdgate.json, the Grafana dashboard for kdgate and its two vLLM servers.

    python deploy/grafana/build_dashboard.py

The dashboard is generated so that every panel is one readable line here; the JSON is committed, and a test
checks that it matches this file and that every query names a metric the gateway, its recording rules or vLLM
export. The datasource is a template variable: import the JSON and pick your Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("kdgate.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
ROUTE_RATE = "sum by (le, route) (rate({metric}_bucket[$__rate_interval]))"


def quantiles(metric: str, qs=(0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, {ROUTE_RATE.format(metric=metric)})", f"p{int(q * 100)} {{{{route}}}}")
            for q in qs]


# (title, unit, [(expr, legend)], kind) in reading order: latency, traffic, routing and cost, divergence, shadow,
# vLLM
PANELS = [
    ("TTFT by route", "s", quantiles("kdgate_time_to_first_token_seconds"), "timeseries"),
    ("End-to-end latency by route", "s", quantiles("kdgate_e2e_request_latency_seconds", (0.5, 0.99)), "timeseries"),
    ("Inter-token latency by route", "s", quantiles("kdgate_inter_token_latency_seconds", (0.5, 0.99)), "timeseries"),
    ("Requests by route and outcome", "reqps",
     [("sum by (route, outcome) (rate(kdgate_requests_total[$__rate_interval]))", "{{route}} {{outcome}}")],
     "timeseries"),
    ("Route mix by reason", "reqps",
     [("sum by (route, reason) (rate(kdgate_route_decisions_total[$__rate_interval]))", "{{route}} ({{reason}})")],
     "timeseries"),
    ("Teacher fraction vs target", "percentunit",
     [("kdgate_teacher_fraction", "realised {{instance}}"), ("kdgate_teacher_fraction_target", "target")],
     "timeseries"),
    ("Cost per 1,000 requests: actual vs all-teacher", "currencyUSD",
     [("kdgate:cost_per_1k_requests_dollars:rate15m", "actual"),
      ("kdgate:cost_all_teacher_per_1k_requests_dollars:rate15m", "all-teacher"),
      ("1000 * sum by (route) (rate(kdgate_cost_dollars_total[15m])) / on() group_left "
       "sum(rate(kdgate_requests_total{outcome=\"ok\"}[15m]))", "actual, {{route}} part")], "timeseries"),
    ("Confidence of held-back student tokens", "short",
     [("sum by (le) (increase(kdgate_confidence_score_bucket[$__rate_interval]))", "{{le}}")], "heatmap"),
    ("Routing threshold", "short", [("kdgate_routing_threshold", "threshold {{instance}}")], "timeseries"),
    ("Drift: student-teacher KL on the uniform sample, per version (the drift alert's signal)", "short",
     [("kdgate:drift_kl:mean15m", "{{student_version}}, 15 min mean (all replicas)"),
      ("sum by (student_version) (rate(kdgate_drift_kl_sum[$__rate_interval])) / sum by (student_version) "
       "(rate(kdgate_drift_kl_count[$__rate_interval]))", "{{student_version}}, now")], "timeseries"),
    ("Student-teacher KL of shadowed (student-served) answers", "short",
     [("kdgate:shadow_kl:mean15m", "15 min mean (all replicas)"), ("kdgate_shadow_kl_rolling", "rolling {{instance}}")],
     "timeseries"),
    ("Agreement with the teacher", "percentunit",
     [("kdgate:shadow_top1_agreement:mean15m", "top-1 tokens, 15 min"),
      ("kdgate_shadow_answer_agreement_rolling", "whole answers, rolling {{instance}}")], "timeseries"),
    ("Teacher NLL of student answers", "short",
     [("sum(rate(kdgate_shadow_teacher_nll_sum[$__rate_interval])) / sum(rate(kdgate_shadow_teacher_nll_count"
       "[$__rate_interval]))", "mean NLL per token")], "timeseries"),
    ("Shadow queue and drops", "short",
     [("kdgate_shadow_queue_depth", "queue {{instance}}"),
      ("max(kdgate_shadow_pending_jobs)", "stored, waiting for the teacher"),
      ("sum by (kind) (rate(kdgate_shadow_sampled_total[$__rate_interval]))", "sampled {{kind}}/s"),
      ("sum by (reason) (rate(kdgate_shadow_dropped_total[$__rate_interval]))", "dropped {{reason}}/s"),
      ("sum by (stage) (rate(kdgate_shadow_failed_total[$__rate_interval]))", "failed {{stage}}/s")], "timeseries"),
    ("Errors by backend", "reqps",
     [("sum by (backend, error) (rate(kdgate_errors_total[$__rate_interval]))", "{{backend}} {{error}}")],
     "timeseries"),
    ("Shadow store write latency p99", "s",
     [("histogram_quantile(0.99, sum by (le) (rate(kdgate_shadow_store_write_seconds_bucket[$__rate_interval])))",
       "p99")], "timeseries"),
    ("vLLM requests running / waiting", "short",
     [("vllm:num_requests_running", "running {{role}}"), ("vllm:num_requests_waiting", "waiting {{role}}")],
     "timeseries"),
    ("vLLM KV-cache usage", "percentunit", [("vllm:kv_cache_usage_perc", "{{role}}")], "timeseries"),
    ("vLLM TTFT p99 (engine side)", "s",
     [("histogram_quantile(0.99, sum by (le, role) (rate(vllm:time_to_first_token_seconds_bucket"
       "[$__rate_interval])))", "{{role}}")], "timeseries"),
    ("vLLM generation throughput", "short",
     [("sum by (role) (rate(vllm:generation_tokens_total[$__rate_interval]))", "tokens/s {{role}}")],
     "timeseries"),
]


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str) -> dict:
    width = 12
    return {
        "id": index + 1, "type": kind, "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": width, "x": (index % 2) * width, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + number), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for number, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "title": "kdgate: student, teacher and the gateway between them",
        "uid": "kdgate-overview", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["kdgate", "vllm"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
        "panels": [panel(index, *spec) for index, spec in enumerate(PANELS)],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT} ({len(PANELS)} panels)")
