"""The `student_version` label stays bounded by what serves: once a version stops serving (a rejected canary), a
request or a shadow comparison of it that finishes afterwards does not bring its series back (they did, for good)."""

from __future__ import annotations

from prometheus_client import generate_latest

from gateway.metrics import GatewayMetrics


def series_of(metrics: GatewayMetrics, version: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if f'student_version="{version}"' in line]


def test_a_version_that_stopped_serving_leaves_no_series_behind():
    metrics = GatewayMetrics()
    metrics.student_serving_changed({"v1": "active", "v2": "canary"}, revision=2)
    metrics.count_student_request("v2", ok=False, escalated=True, ttft=0.1)
    metrics.observe_drift("v2", 0.3, 0.9, False)
    assert series_of(metrics, "v2")  # the canary is measured while it serves
    metrics.student_serving_changed({"v1": "active"}, revision=3)  # rejected and rolled back
    assert series_of(metrics, "v2") == []
    metrics.count_student_request("v2", ok=True, escalated=False, ttft=0.2)  # its last stream ends after that
    metrics.observe_drift("v2", 0.1, 1.0, True)  # and its last drift-sample comparison
    assert series_of(metrics, "v2") == []
    metrics.count_student_request("v1", ok=True, escalated=False, ttft=0.2)
    assert any(line.startswith('kdgate_student_requests_total{outcome="ok",student_version="v1"} 1.0')
               for line in series_of(metrics, "v1"))
