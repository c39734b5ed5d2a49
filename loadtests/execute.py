"""One load test from start to files: find the model, scrape `/metrics`, run, summarise, write the report.

Also the sweep: synchronous (one request at a time), then throughput (everything in flight at once), then open-loop
Poisson rates spaced evenly between the two measured request rates.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx

from loadtests import report, scrape
from loadtests.runner import Bounds, RunResult, Shape, Target, run
from loadtests.stats import Slo, summarize
from loadtests.workload import BodySettings, Prompt


@dataclass(frozen=True)
class Plan:
    base_url: str  # …/v1
    endpoint: str  # chat | completions
    headers: dict[str, str]
    request: BodySettings
    prompts: list[Prompt] = field(repr=False)
    bounds: Bounds
    slo: Slo = Slo()
    seed: int = 0
    scrape_metrics: bool = True
    cost_settle: float = 30.0  # at most this long after a run, wait for the gateway's cost counters to settle

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    @property
    def metrics_url(self) -> str:
        return re.sub(r"/v1$", "", self.base_url) + "/metrics"


def normalise_base_url(url: str) -> str:
    url = url.rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ValueError(f"--url {url!r}: give an http(s) URL such as http://127.0.0.1:8000")
    return url if url.endswith("/v1") else url + "/v1"


def discover_model(base_url: str, headers: dict[str, str]) -> str | None:
    """The first model `/v1/models` lists; None when the server cannot be reached or lists none."""
    try:
        response = httpx.get(f"{base_url}/models", headers=headers, timeout=10.0)
        response.raise_for_status()
        models = [card["id"] for card in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return models[0] if models else None


def execute(plan: Plan, shape: Shape, label: str, out: Path | None) -> dict:
    """Run one shape; returns the report (config, summary, records) and writes it under `out`."""
    before = scrape.histogram(plan.metrics_url) if plan.scrape_metrics else None
    cost_before = scrape.cost(plan.metrics_url) if plan.scrape_metrics else None
    result: RunResult = asyncio.run(run(Target(plan.url, plan.headers, plan.request), plan.prompts, shape,
                                        plan.bounds, seed=plan.seed))
    summary = summarize(result.records, result.elapsed, plan.slo, result.peak_concurrency)
    if plan.scrape_metrics:
        summary["server_ttft"] = scrape.delta(before, scrape.histogram(plan.metrics_url))
        cost = scrape.cost_delta(cost_before, scrape.settled_cost(plan.metrics_url, plan.cost_settle))
        if cost is not None:  # a gateway with priced backends
            summary["server_cost"] = cost
    built = {"label": label, "url": plan.url, "model": plan.request.model, "shape": asdict(shape),
             "shape_label": shape.label, "bounds": asdict(plan.bounds), "request": asdict(plan.request),
             "slo": asdict(plan.slo), "seed": plan.seed, "started": result.started, "elapsed": result.elapsed,
             "ttft_definition": "first SSE chunk with generated content; ttfc: first chunk of any kind",
             "summary": summary, "records": [record.to_json() for record in result.records]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = _slug(label)
        report.write_json(out / f"{stem}.json", built)
        if report.can_plot():
            report.plot_ttft_cdf(result.records, out / f"{stem}-ttft-cdf.png", f"TTFT — {label}")
        report.append_csv(out / "runs.csv", [report.csv_row(summary, label, shape.label, shape.rate)])
    return built


def sweep(plan: Plan, rates: int, max_concurrency: int, out: Path | None, on_run=None) -> list[dict]:
    """Synchronous → throughput → `rates` Poisson rates between; each run's report, in order."""
    reports = []

    def step(shape: Shape, label: str) -> dict:
        built = execute(plan, shape, label, out)
        reports.append(built)
        if on_run:
            on_run(built)
        return built

    low = step(Shape(concurrency=1), "synchronous")["summary"]["request_throughput"]
    high = step(Shape(concurrency=max_concurrency), f"throughput (concurrency {max_concurrency})")[
        "summary"]["request_throughput"]
    if high > low:
        for index in range(1, rates + 1):
            rate = low + (high - low) * index / (rates + 1)
            step(Shape(rate=round(rate, 3)), f"rate {rate:.2f} req/s")
    if out is not None and report.can_plot():
        rows = [report.csv_row(r["summary"], r["label"], r["shape_label"], r["shape"]["rate"]) for r in reports]
        report.plot_sweep(rows, out / "sweep.png", f"sweep — {plan.url}")
    return reports


def with_model(plan: Plan, model: str) -> Plan:
    return replace(plan, request=replace(plan.request, model=model))


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "run"
