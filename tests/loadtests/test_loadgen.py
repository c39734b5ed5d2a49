"""The load generator against real servers: the demo gateway (routes broken out), the local engine's HTTP server,
and broken upstreams (failures counted with reasons, the run ends on time, the report is written)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time

import pytest
from typer.testing import CliRunner

from gateway.settings import RoutingSettings
from gateway.threaded import ThreadedServer
from kdgate.cli import app
from loadtests.runner import Bounds, Shape, Target, _State, run
from loadtests.stats import summarize
from loadtests.workload import BodySettings, demo_prompts
from tests.conftest import gateway_settings
from tests.loadtests.faulty import Faulty

runner = CliRunner()


@pytest.fixture(scope="module")
def mixed_gateway(demo_dirs, engine_server):
    """The demo gateway sending a seeded random half of its requests to the teacher."""
    from gateway.app import create_app

    routing = RoutingSettings(policy="random", teacher_fraction=0.5, seed=3)
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


@pytest.fixture(scope="module")
def priced_gateway(demo_dirs, engine_server):
    """The mixed gateway with priced backends: student $1 / $3, teacher $10 / $40 per million prompt / completion
    tokens."""
    from gateway.app import create_app
    from runtime.settings import CostSettings

    routing = RoutingSettings(policy="random", teacher_fraction=0.5, seed=3)
    settings = gateway_settings(demo_dirs, engine_server, routing=routing)
    prices = {"student": CostSettings(prompt_per_million=1, completion_per_million=3),
              "teacher": CostSettings(prompt_per_million=10, completion_per_million=40)}
    settings = settings.model_copy(update={role: getattr(settings, role).model_copy(update={"cost": cost})
                                           for role, cost in prices.items()})
    with ThreadedServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def faulty():
    with ThreadedServer(Faulty()) as server:
        yield server


def test_per_route_report_through_the_gateway(mixed_gateway, tmp_path):
    out = tmp_path / "lt"
    result = runner.invoke(app, ["loadtest", "run", "--url", mixed_gateway.url, "--concurrency", "2",
                                 "--requests", "16", "--warmup", "2", "--max-tokens", "48", "--out", str(out),
                                 "--slo", "ttft=5s", "--fail-if", "error_rate>0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "concurrency-2.json").read_text())
    summary = report["summary"]
    assert summary["requests"] == 16 and summary["failed"] == 0 and len(report["records"]) == 18
    assert set(summary["routes"]) == {"student", "teacher"}
    assert sum(group["requests"] for group in summary["routes"].values()) == 16
    assert summary["usage_from_server"] and summary["output_tokens"] > 16
    for group in summary["routes"].values():
        assert 0 < group["ttft"]["median"] <= group["e2e"]["median"]
    assert summary["goodput"] > 0 and summary["peak_concurrency"] == 2
    # the gateway's own histogram, read from /metrics before and after: every request of the run, warm-up included
    assert summary["server_ttft"]["count"] == len(report["records"]) == 18
    assert (out / "concurrency-2-ttft-cdf.png").stat().st_size > 5_000
    assert "student" in result.output and "teacher" in result.output


def test_cost_per_1000_requests_is_the_gateways_own_count(priced_gateway, tmp_path):
    """The report's cost figures are the gateway's counters over its answered requests; here they must equal the
    usage the client was sent at each route's prices (no shadow work, no handoff)."""
    import csv

    result = runner.invoke(app, ["loadtest", "run", "--url", priced_gateway.url, "--concurrency", "2",
                                 "--requests", "10", "--warmup", "2", "--max-tokens", "32", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "concurrency-2.json").read_text())
    records = report["records"]  # warm-up ones too: the gateway counted them
    prices = {"student": (1e-6, 3e-6), "teacher": (10e-6, 40e-6)}

    def per_1k(route_of) -> float:
        return 1000 * sum(record["input_tokens"] * prices[route_of(record)][0] + record["output_tokens"] *
                          prices[route_of(record)][1] for record in records) / len(records)

    cost = report["summary"]["server_cost"]
    assert {record["route"] for record in records} == {"student", "teacher"} and cost["answered"] == 12
    assert cost["per_1k"] == pytest.approx(per_1k(lambda record: record["route"]))
    assert cost["all_teacher_per_1k"] == pytest.approx(per_1k(lambda record: "teacher"))
    assert sum(cost["by_route_per_1k"].values()) == pytest.approx(cost["per_1k"])
    assert 0 < cost["saving"] < 1
    assert "cost per 1,000 requests" in result.output and "all-teacher" in result.output
    row = next(csv.DictReader((tmp_path / "runs.csv").open()))
    assert float(row["cost_per_1k"]) == pytest.approx(cost["per_1k"])


def test_an_unpriced_server_reports_no_cost(mixed_gateway, tmp_path):
    result = runner.invoke(app, ["loadtest", "run", "--url", mixed_gateway.url, "--concurrency", "1",
                                 "--requests", "2", "--max-tokens", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "server_cost" not in json.loads((tmp_path / "concurrency-1.json").read_text())["summary"]
    assert "cost per 1,000" not in result.output


def test_records_recompute_the_summary_and_forced_routes_show(mixed_gateway):
    prompts = demo_prompts(4, seed=1)
    target = Target(f"{mixed_gateway.url}/v1/chat/completions", {"x-kdgate-force": "teacher"},
                    BodySettings(model="kdgate-demo", max_tokens=24, logprobs=2))
    result = asyncio.run(run(target, prompts, Shape(concurrency=2), Bounds(requests=4)))
    assert {record.route for record in result.records} == {"teacher"}
    assert all(record.reason == "forced:header" for record in result.records)
    assert all(record.ttfc <= record.ttft and len(record.itl) >= 1 for record in result.records)
    summary = summarize(result.records, result.elapsed)
    assert summary["ttft"]["count"] == 4 and summary["routes"]["teacher"]["requests"] == 4


def test_vllm_protocol_engine_server(engine_server, tmp_path):
    """The local engine's HTTP server (vLLM's protocol); the model found through /v1/models."""
    result = runner.invoke(app, ["loadtest", "run", "--url", engine_server.base_url, "--concurrency", "2",
                                 "--requests", "4", "--max-tokens", "16", "--out", str(tmp_path),
                                 "--no-scrape-metrics"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "concurrency-2.json").read_text())
    assert report["model"] == engine_server.model and report["summary"]["failed"] == 0


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_measures_a_server_of_known_timing(endpoint):
    """Against the zero-work instrument with a set TTFT and inter-token delay, the measured ones match."""
    from loadtests.zero import ZeroServer, ZeroSettings

    settings = ZeroSettings(ttft_ms=80, itl_ms=15, output_tokens=12)
    with ThreadedServer(ZeroServer(settings)) as server:
        path = "chat/completions" if endpoint == "chat" else "completions"
        target = Target(f"{server.url}/v1/{path}", {}, BodySettings(model="zero", max_tokens=12))
        result = asyncio.run(run(target, demo_prompts(3, seed=0), Shape(concurrency=1), Bounds(requests=3)))
    summary = summarize(result.records, result.elapsed)
    assert summary["failed"] == 0 and summary["usage_from_server"]
    # Lower bounds are the server's sleeps; upper bounds leave room for a loaded 2-core box (a broken measure, such
    # as one that counts from the wrong instant or splits chunks wrongly, is off by far more or falls below).
    assert 0.080 <= summary["ttft"]["median"] < 0.080 + 0.5
    assert 0.010 < summary["itl"]["median"] < 0.015 + 0.1
    assert summary["output_tokens"] == 3 * 12 and 0.010 < summary["tpot"]["median"] < 0.015 + 0.1


def test_a_zero_server_with_slots_makes_the_rest_wait():
    """`slots` is the overload instrument's batch capacity: with one slot, a second stream's first token waits for
    the first stream's whole answer (12 tokens × 15 ms after 20 ms), as a full vLLM batch makes new requests wait."""
    from loadtests.zero import ZeroServer, ZeroSettings

    settings = ZeroSettings(ttft_ms=20, itl_ms=15, output_tokens=12, slots=1)
    with ThreadedServer(ZeroServer(settings)) as server:
        target = Target(f"{server.url}/v1/chat/completions", {}, BodySettings(model="zero", max_tokens=12))
        result = asyncio.run(run(target, demo_prompts(2, seed=0), Shape(concurrency=2), Bounds(requests=2)))
    ttfts = sorted(record.ttft for record in result.records)
    assert all(record.ok for record in result.records)
    assert ttfts[1] > 0.020 + 11 * 0.015 and ttfts[0] < ttfts[1] - 0.1


def integrated_rate(t: float, rate: float, ramp: float) -> float:
    """Arrivals expected by `t` when the rate climbs linearly from 0 to `rate` over `ramp` seconds, then holds:
    the integral of rate·min(t/ramp, 1)."""
    return rate * t * t / (2 * ramp) if t < ramp else rate * ramp / 2 + rate * (t - ramp)


def check_open_loop_arrivals(scheduled: list[float], rate: float, ramp: float, burstiness: float, seed: int,
                             duration: float) -> None:
    """Arrival times of an open-loop run against the shape asked for: mapped through the integrated rate they must
    be the cumulated gaps of a rate-1 gamma renewal process (shape = burstiness, mean gap 1) drawn from the run's
    seed; none falls after the sending window, and the run kept up with the plan until 0.5 s before its end."""
    rng = random.Random(seed)
    units, unit = [], 0.0
    for _ in range(len(scheduled) + 64):
        unit += rng.gammavariate(burstiness, 1.0 / burstiness)
        units.append(unit)
    assert [integrated_rate(t, rate, ramp) for t in scheduled] == pytest.approx(units[:len(scheduled)], rel=1e-9)
    assert all(t < duration for t in scheduled)
    planned = [u for u in units if integrated_rate(duration - 0.5, rate, ramp) > u]
    assert len(scheduled) >= len(planned), (len(scheduled), len(planned))


def test_nothing_planned_after_the_sending_window_is_sent():
    """The window closes on the plan's clock, not only on the timer's (started a moment after the origin): a CI run
    sent an arrival planned at 1.504 s of a 1.5 s window."""
    state = _State(Bounds(duration=1.5, grace=10.0), total=None)
    assert state.next_record(1.4992) is not None
    assert state.next_record(1.5042) is None and len(state.records) == 1


def test_open_loop_rate_cap_ramp_and_duration(mixed_gateway):
    prompts = demo_prompts(8, seed=2)
    target = Target(f"{mixed_gateway.url}/v1/chat/completions", {}, BodySettings(model="kdgate-demo",
                                                                                 max_tokens=16))
    shape = Shape(rate=20.0, arrivals="gamma", burstiness=0.5, max_concurrency=2, ramp_up=0.5)
    started = time.monotonic()
    result = asyncio.run(run(target, prompts, shape, Bounds(duration=1.5, grace=10.0), seed=0))
    assert time.monotonic() - started < 1.5 + 10.0 + 5.0
    check_open_loop_arrivals([record.scheduled for record in result.records], rate=20.0, ramp=0.5,
                             burstiness=0.5, seed=0, duration=1.5)
    assert result.peak_concurrency <= 2 and len(result.records) >= 5
    assert max(record.queue_time for record in result.records) > 0  # a capped open loop queues in the client


def test_the_open_loop_arrival_check_fails_when_the_ramp_or_the_rate_is_wrong():
    """The arrival check can fail: times drawn from the same gaps but with no ramp, at half the rate, or past the
    window are caught, while the right ones pass."""
    rng = random.Random(0)
    units = list(itertools.accumulate(rng.gammavariate(0.5, 2.0) for _ in range(40)))

    def inverse(u: float, rate: float, ramp: float) -> float:  # solves integrated_rate(t) = u
        return math.sqrt(2 * ramp * u / rate) if u < rate * ramp / 2 else ramp / 2 + u / rate

    right = [t for t in (inverse(u, 20.0, 0.5) for u in units) if t < 1.5]
    check_open_loop_arrivals(right, rate=20.0, ramp=0.5, burstiness=0.5, seed=0, duration=1.5)
    for wrong in ([u / 20.0 for u in units if u / 20.0 < 1.5],  # no ramp
                  [t for t in (inverse(u, 10.0, 0.5) for u in units) if t < 1.5],  # half the rate
                  [inverse(u, 20.0, 0.5) for u in units]):  # arrivals after the window
        with pytest.raises(AssertionError):
            check_open_loop_arrivals(wrong, rate=20.0, ramp=0.5, burstiness=0.5, seed=0, duration=1.5)


@pytest.mark.parametrize(("mode", "reason"), [
    ("rejects", "HTTP 429: rejects on purpose"), ("crashes", "HTTP 500: crashes on purpose"),
    ("garbage", "malformed chunk"), ("silent", "no token"), ("endless", "cancelled")])
def test_broken_upstreams_are_failures_with_reasons(faulty, tmp_path, mode, reason):
    out = tmp_path / mode
    started = time.monotonic()
    result = runner.invoke(app, ["loadtest", "run", "--url", f"{faulty.url}/{mode}", "--model", "m",
                                 "--concurrency", "2", "--requests", "4", "--duration", "1", "--grace", "0.5",
                                 "--out", str(out), "--fail-if", "error_rate>0.01", "--no-scrape-metrics"])
    assert time.monotonic() - started < 15
    assert result.exit_code == 1, result.output  # the gate fails the run
    summary = json.loads((out / "concurrency-2.json").read_text())["summary"]
    assert summary["error_rate"] == 1.0
    assert any(sample.startswith(reason) for failure in summary["failures"].values()
               for sample in failure["samples"])


def test_pings_are_not_tokens(faulty):
    target = Target(f"{faulty.url}/pings/v1/chat/completions", {}, BodySettings(model="m"))
    result = asyncio.run(run(target, demo_prompts(1, seed=0), Shape(concurrency=1), Bounds(requests=1)))
    record = result.records[0]
    assert record.ok and record.output_tokens == 2 and not record.usage_from_server and record.ttft > 0.04


def test_unreachable_url_still_writes_a_report(tmp_path):
    from gateway.threaded import free_port

    out = tmp_path / "down"
    result = runner.invoke(app, ["loadtest", "run", "--url", f"http://127.0.0.1:{free_port()}", "--concurrency",
                                 "1", "--requests", "3", "--out", str(out), "--no-scrape-metrics"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "concurrency-1.json").read_text())["summary"]
    assert summary["failed"] == 3 and "ConnectError" in summary["failures"]


@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency", "0"], "concurrency"),
    (["--rate", "2", "--arrivals", "weibull"], "--arrivals"),
    (["--concurrency", "1", "--fail-if", "p99_ttfx>3ms"], "unknown metric"),
    (["--concurrency", "1", "--slo", "ttft=fast"], "not a duration"),
    (["--concurrency", "1", "--header", "nocolon"], "Name: value"),
    ([], "load shape"),
])
def test_invalid_flags_are_usage_errors(args, message):
    result = runner.invoke(app, ["loadtest", "run", "--url", "http://127.0.0.1:9", "--model", "m",
                                 "--requests", "1", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_sweep_goes_from_synchronous_to_throughput(mixed_gateway, tmp_path):
    import csv

    result = runner.invoke(app, ["loadtest", "sweep", "--url", mixed_gateway.url, "--requests", "6", "--rates", "2",
                                 "--max-concurrency", "4", "--max-tokens", "16", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [row["label"] for row in rows][:2] == ["synchronous", "throughput (concurrency 4)"]
    assert len(rows) == 4 and all(float(row["offered_rate"]) > 0 for row in rows[2:])
    assert float(rows[1]["request_throughput"]) > float(rows[0]["request_throughput"])
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_student_versions_are_counted_and_a_prompt_answered_two_ways_is_flagged():
    """At temperature 0 a version answers a prompt one way: a second answer is a mixed stream (or sampling)."""
    from loadtests.client import RequestRecord
    from loadtests.stats import student_versions

    def served(index, prompt, version, answer):
        return RequestRecord(index, 0.0, student_version=version, prompt=prompt, answer_sha=answer)

    clean = [served(0, 0, "v1", "a"), served(1, 0, "v2", "b"), served(2, 0, "v1", "a"), served(3, 1, "v2", "c")]
    assert student_versions(clean) == {"requests": {"v1": 2, "v2": 2}, "prompt_version_pairs": 3,
                                       "pairs_with_several_answers": 0, "prompts_served_by_several_versions": 1,
                                       "of_which_answered_differently": 1}
    assert student_versions(clean + [served(4, 0, "v1", "b")])["pairs_with_several_answers"] == 1
    assert student_versions([RequestRecord(0, 0.0)]) is None  # a server that names no version
