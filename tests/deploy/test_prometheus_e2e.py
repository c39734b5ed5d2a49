"""End to end: the gateway on the demo models, a real Prometheus (Debian's) scraping it with the project's rules,
traffic on which the student diverges from the teacher, and the drift alert going to firing in Prometheus.

The rules are the project's own; only their `for:` durations and evaluation interval are shortened to seconds,
so that the test takes a minute instead of ten."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest
from openai import OpenAI

from distill.demo import task
from gateway.settings import ShadowSettings
from tests import needs
from tests.conftest import ROOT, ThreadedServer, free_port, gateway_settings, wait_until_up

pytestmark = pytest.mark.slow
ALERT = "KdgateStudentDivergenceHigh"


def fast_rules(text: str) -> str:
    text = re.sub(r"for: \d+m", "for: 5s", text)
    return re.sub(r"interval: \d+s", "interval: 1s", text)


def alert_state(url: str) -> str:
    alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return next((alert["state"] for alert in alerts if alert["labels"]["alertname"] == ALERT), "inactive")


def test_divergent_traffic_fires_the_drift_alert(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    shadow = ShadowSettings(enabled=True, sample_rate=1.0, store_url=f"sqlite:///{tmp_path}/shadow.sqlite3")
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, shadow=shadow))) as gateway:
        rules = tmp_path / "kdgate.yml"
        rules.write_text(fast_rules((ROOT / "deploy" / "prometheus" / "rules" / "kdgate.yml").read_text()))
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{rules}]\n"
            f"scrape_configs:\n  - job_name: kdgate\n    static_configs: [{{targets: ['127.0.0.1:{gateway.port}']}}]\n")
        command = [needs.tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{url}/-/ready", server)
            assert alert_state(url) == "inactive"
            client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)

            def answer(ticket, force=None) -> str:
                return client.chat.completions.create(
                    model="kdgate-demo", temperature=0, max_tokens=96, messages=ticket.messages(),
                    extra_headers={"x-kdgate-force": force} if force else None).choices[0].message.content

            # Traffic the student gets wrong: two-order tickets where it picks the other order's number. Forced
            # requests are never shadowed, so finding them does not feed the metric.
            hard = [t for t in task.take("test", 400, seed=11) if t.factors["shape"] != "one_order"]
            divergent = [t for t in hard if answer(t, force="student") != t.answer_json()][:25]
            assert len(divergent) >= 20
            for ticket in divergent:
                answer(ticket)  # drawn for the drift sample, served by the student, scored by the teacher
            deadline = time.monotonic() + 120
            while (state := alert_state(url)) != "firing" and time.monotonic() < deadline:
                time.sleep(1)
            mean_kl = httpx.get(f"{url}/api/v1/query", params={"query": "kdgate:drift_kl:mean15m"}).json()
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert state == "firing", f"alert state {state}; mean KL: {mean_kl['data']['result']}"
    (series,) = mean_kl["data"]["result"]  # the drift sample: every request drawn, here each one the student served
    assert series["metric"]["student_version"] == "initial" and float(series["value"][1]) > 0.06
