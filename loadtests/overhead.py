"""The gateway's own overhead, in one interleaved run: every arm in front of the same zero-work server.

    python -m loadtests.overhead --rounds 3 --requests 200 --out runs/overhead \
        --litellm .venv-litellm/bin/litellm

Arms (one worker process each, all started once and kept up):
  direct            the zero-work server itself
  passthrough       FastAPI + one shared httpx client streaming bytes unchanged (the floor of a Python hop)
  kdgate            student_only: routing off
  kdgate handoff    routing active from token 0 (N=0): student logprobs requested, every token checked against
                    the handoff floor, nothing held back
  kdgate hold-8     the confidence policy holding back 8 tokens (N=8), logprobs on, then releasing them
  kdgate handoff ×N the handoff arm with N uvicorn workers (--workers; multiprocess metrics), for scaling
  kdgate handoff +keys+limits   the handoff arm with an API key required and per-key request and token limits
                    (in-memory sliding windows; limits far above the load, so what is measured is their cost)
  kdgate handoff +keys+redis    the same with the windows in Redis (--redis URL: a running redis-server)
  baseline handoff  the handoff arm run from another checkout (--baseline DIR, e.g. a `git worktree` of the last
                    release): what a change costs, measured in the same interleaved run
  litellm           LiteLLM's proxy (optional: --litellm PATH; it lives in its own virtualenv)
  vllm direct       a real vLLM server (CPU build) serving the demo student (optional: --vllm PYTHON, the python of
                    the environment `./dev setup vllm` makes), on the load generator's core as the zero server is
  kdgate handoff → vllm   the handoff arm in front of that vLLM server (student and teacher): its added latency
                    and CPU are against `vllm direct` of the same round, not the zero server

Each round visits the arms in a rotated order (machine noise hits all alike) and runs closed-loop streaming load at
each concurrency (32-token answers). Reported per arm: added TTFT and e2e at p50/p99 against `direct` from the same
round, CPU milliseconds per streamed request of the arm's server processes (from /proc, so the load generator's and
the zero server's CPU are not counted), and the max sustainable rate of one worker: the highest offered Poisson rate
whose p99 TTFT stays under twice the arm's own p99 at the lowest rate. With two or more cores (`--pin`, the default)
the load generator and the zero server run on the first core and each one-worker arm on the second, so that an
arm's figures are not the scheduler's time-slicing between three busy processes; the several-worker arm gets the
remaining cores, or all of them on a 2-core machine (then it shares a core with the load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.threaded import free_port, wait_until_up
from loadtests.runner import Bounds, Shape, Target, run
from loadtests.stats import summarize
from loadtests.workload import BodySettings, synthetic_prompts

MODEL = "zero"
LITELLM_KEY = "sk-kdgate-bench"


@dataclass
class Arm:
    name: str
    url: str  # …/v1
    process: subprocess.Popen | None = None
    headers: dict[str, str] = field(default_factory=dict)
    baseline: str = "direct"  # the arm its added latency is measured against, in the same round
    backend: subprocess.Popen | None = None  # a backend server the arm stands for (stopped at the end, CPU not counted)

    def cpu_seconds(self) -> float:
        """User + system CPU of the arm's process tree (0 for `direct`, which is not a gateway)."""
        return 0.0 if self.process is None else sum(_cpu(pid) for pid in _tree(self.process.pid))


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True)
class Cores:
    """Which CPUs each side runs on: the load generator and the zero server share `client`; one gateway worker
    gets `gateway` to itself, so its max rate is its own and not the scheduler's; several workers get `workers`."""

    client: frozenset[int] | None = None
    gateway: frozenset[int] | None = None
    workers: frozenset[int] | None = None

    @classmethod
    def split(cls, pin: bool) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if not pin or len(available) < 2:
            return cls()
        rest = frozenset(available[1:])
        return cls(frozenset(available[:1]), frozenset(available[1:2]), rest if len(rest) > 1 else frozenset(available))


def start_process(command: list[str], url: str, env: dict[str, str] | None = None, log: Path | None = None,
                  cores: frozenset[int] | None = None, cwd: str | None = None,
                  timeout: float = 120) -> subprocess.Popen:
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 — lives as long as the process
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT,
                               preexec_fn=pin, cwd=cwd)
    try:
        wait_until_up(url, process, timeout=timeout)
    except RuntimeError as error:  # it exited: say why, from its own log ("server exited with 3" said nothing)
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-5:]) if log else "(no log kept)"
        raise RuntimeError(f"{error}; the end of its log ({log}):\n{tail}") from None
    return process


def kdgate_config(folder: Path, name: str, zero_url: str, routing: dict, extra: dict | None = None) -> Path:
    backend = {"kind": "http", "base_url": zero_url, "model": MODEL}
    # No student versions, hence no store: the default one is derived from the student backend, whose zero-server
    # port is new every run, so each run would leave a store file of its own under var/.
    config = {"served_model": MODEL, "student": backend, "teacher": backend, "routing": routing,
              "shadow": {"enabled": False}, "students": {"enabled": False}, "log_level": "warning"} | (extra or {})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def keyed() -> tuple[str, dict]:
    """A key and the settings that require it, with request and token limits far above any load here."""
    from runtime.credentials import new_key

    key, digest = new_key()
    return key, {"auth": {"keys": [{"name": "bench", "sha256": digest}]},
                 "limits": {"key_requests_per_minute": 10**9, "key_tokens_per_minute": 10**12}}


def _hold_back_policy(folder: Path, prefix: int) -> Path:
    from router.policy_file import Calibration, PolicyFile, save_policy
    from router.scorers import SignalScorer

    policy = PolicyFile(prefix_tokens=prefix, top_logprobs=5, scorer=SignalScorer("mean_logprob"), threshold=-1.0,
                        calibration=Calibration(data="overhead benchmark: every answer passes", examples=1,
                                                target_teacher_fraction=0.0, realised_teacher_fraction=0.0))
    path = folder / f"hold-{prefix}.json"
    save_policy(policy, path)
    return path


def start_arms(args: argparse.Namespace, folder: Path, cores: Cores) -> tuple[subprocess.Popen, list[Arm]]:
    """The zero-work server (on the client's cores, as this process is), and every arm in front of it."""
    kdgate = [sys.executable, "-m", "kdgate.cli"]
    zero_port = free_port()
    zero_url = f"http://127.0.0.1:{zero_port}/v1"
    zero = start_process(kdgate + ["loadtest", "zero-server", "--port", str(zero_port), "--itl-ms", str(args.itl_ms),
                                   "--output-tokens", str(args.output_tokens)], f"{zero_url}/models")
    arms = [Arm("direct", zero_url)]
    port = free_port()
    if not args.only or "passthrough" in args.only:
        arms.append(Arm("passthrough", f"http://127.0.0.1:{port}/v1", start_process(
            kdgate + ["loadtest", "passthrough", "--port", str(port), "--upstream", zero_url.removesuffix("/v1")],
            f"http://127.0.0.1:{port}/v1/models", cores=cores.gateway)))
    variants = {"kdgate": {"policy": "student_only"},
                "kdgate handoff": {"policy": "student_only", "handoff": {"enabled": True, "min_prob": 0.01}},
                "kdgate hold-8": {"policy": "confidence", "policy_file": str(_hold_back_policy(folder, 8))}}
    runs = [(name, routing, 1, None) for name, routing in variants.items()]
    runs += [(f"kdgate handoff ×{workers}", variants["kdgate handoff"], workers, None) for workers in args.workers
             if workers > 1]
    key, guarded = keyed()
    runs.append(("kdgate handoff +keys+limits", variants["kdgate handoff"], 1, guarded))
    if args.redis:
        runs.append(("kdgate handoff +keys+redis", variants["kdgate handoff"], 1,
                     guarded | {"limits": guarded["limits"] | {"redis_url": args.redis}}))
    if args.only:
        runs = [run for run in runs if run[0] in args.only]
    for name, routing, workers, extra in runs:
        port, slug = free_port(), name.replace(" ", "-").replace("×", "x").replace("+", "")
        config = kdgate_config(folder, slug, zero_url, routing, extra)
        arms.append(Arm(name, f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {key}"} if extra
                        else {}, process=start_process(
            kdgate + ["serve", "--port", str(port), "--config", str(config), "--workers", str(workers)],
            f"http://127.0.0.1:{port}/readyz", log=folder / f"{slug}.log",
            cores=cores.gateway if workers == 1 else cores.workers)))
    if args.baseline:
        port = free_port()
        config = kdgate_config(folder, "baseline", zero_url, variants["kdgate handoff"])
        arms.append(Arm("baseline handoff", f"http://127.0.0.1:{port}/v1", process=start_process(
            kdgate + ["serve", "--port", str(port), "--config", str(config)], f"http://127.0.0.1:{port}/readyz",
            env={"PYTHONPATH": str(Path(args.baseline).resolve())}, log=folder / "baseline.log",
            cores=cores.gateway, cwd=args.baseline)))
    if args.litellm:
        arms.append(_start_litellm(args.litellm, folder, zero_url, cores.gateway))
    if args.vllm:
        arms += _start_vllm_arms(args.vllm, folder, cores, variants["kdgate handoff"])
    return zero, arms


def _start_vllm_arms(python: str, folder: Path, cores: Cores, routing: dict) -> list[Arm]:
    """A real vLLM server on the demo student (named MODEL, so the same requests go to it) and the handoff arm in
    front of it. vLLM's OpenMP threads are bound to the load generator's core(s), as the zero server shares them."""
    from runtime.demo import DEMO_STUDENT_DIR

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    bind = ",".join(str(core) for core in sorted(cores.client)) if cores.client else "auto"
    server = start_process([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(DEMO_STUDENT_DIR),
                            "--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "512",
                            "--max-logprobs", "20", "--host", "127.0.0.1", "--port", str(port)],
                           f"http://127.0.0.1:{port}/health", log=folder / "vllm.log", cores=cores.client,
                           env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": bind}, timeout=600)
    gateway_port = free_port()
    config = kdgate_config(folder, "handoff-vllm", url, routing)
    gateway = start_process([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(gateway_port), "--config",
                             str(config)], f"http://127.0.0.1:{gateway_port}/readyz", log=folder / "handoff-vllm.log",
                            cores=cores.gateway)
    # like `direct`, `vllm direct` counts no CPU: vLLM is the backend here, as the zero server is for the others
    return [Arm("vllm direct", url, baseline="vllm direct", backend=server),
            Arm("kdgate handoff → vllm", f"http://127.0.0.1:{gateway_port}/v1", gateway, baseline="vllm direct")]


def _start_litellm(binary: str, folder: Path, zero_url: str, cores: frozenset[int] | None) -> Arm:
    port = free_port()
    config = folder / "litellm.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": zero_url, "api_key": "none"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False}}))
    env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    process = start_process([binary, "--config", str(config), "--port", str(port), "--num_workers", "1"],
                            f"http://127.0.0.1:{port}/health/liveliness", env=env, log=folder / "litellm.log", cores=cores)
    return Arm("litellm", f"http://127.0.0.1:{port}/v1", process, {"Authorization": f"Bearer {LITELLM_KEY}"})


async def settle(arms: list[Arm], quiet: float = 0.025, timeout: float = 10.0) -> None:
    """Wait until every gateway process is idle (a server still finishing the last arm's work, LiteLLM's logging
    say, would take its core from the next arm), and collect this process's garbage before the clock starts."""
    gc.collect()
    deadline = time.monotonic() + timeout
    last = sum(arm.cpu_seconds() for arm in arms)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = sum(arm.cpu_seconds() for arm in arms)
        if now - last < quiet:
            return
        last = now


async def measure(arm: Arm, shape: Shape, bounds: Bounds, prompts, args, arms: list[Arm]) -> dict:
    await settle(arms)
    request = BodySettings(model=MODEL, max_tokens=args.output_tokens, logprobs=None)
    before = arm.cpu_seconds()
    result = await run(Target(f"{arm.url}/chat/completions", arm.headers, request), prompts, shape, bounds)
    cpu = arm.cpu_seconds() - before
    summary = summarize(result.records, result.elapsed)
    measured = len(result.records)  # warm-up requests cost CPU too
    finished = sum(record.ok for record in result.records)  # warm-up included: it was offered load too
    return {"ttft_p50": _stat(summary, "ttft", "median"), "ttft_p99": _stat(summary, "ttft", "p99"),
            "e2e_p50": _stat(summary, "e2e", "median"), "e2e_p99": _stat(summary, "e2e", "p99"),
            "cpu_ms_per_request": 1000 * cpu / max(measured, 1), "failed": summary["failed"],
            "all_finished": finished == len(result.records),
            "throughput": finished / result.elapsed if result.elapsed else 0.0}


def _stat(summary: dict, metric: str, key: str) -> float | None:
    return (summary.get(metric) or {}).get(key)


async def max_rates(arms: list[Arm], prompts, args) -> dict:
    """Raise the offered Poisson rate until each arm's p99 TTFT doubles against its own at the lowest rate (or a
    request fails). Every request offered must finish: a server that falls behind queues them, and their TTFT shows
    it. Each rate is `rate_repeats` windows per arm, interleaved (rotated order) like the cells, and judged on the
    median of the windows' p99s: one window hit by a stall of the machine does not end an arm's search."""
    points: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    standing = list(arms)
    for index, rate in enumerate(args.rates):
        windows: dict[str, list[dict]] = {arm.name: [] for arm in standing}
        for repeat in range(args.rate_repeats):
            shift = (index + repeat) % len(standing)
            for arm in standing[shift:] + standing[:shift]:
                bounds = Bounds(duration=args.rate_seconds, warmup=min(5, int(rate)), grace=5.0, timeout=30.0)
                windows[arm.name].append(await measure(arm, Shape(rate=rate), bounds, prompts, args, arms))
        for arm in standing:
            point = _combine(windows[arm.name]) | {"rate": rate}
            baseline = points[arm.name][0]["ttft_p99"] if points[arm.name] else point["ttft_p99"]
            point["sustained"] = (point["failed"] == 0 and point["all_finished"] and point["ttft_p99"] is not None
                                  and baseline is not None and point["ttft_p99"] <= 2 * baseline)
            points[arm.name].append(point)
            print(f"rate {rate:g} {arm.name:17s} p99 TTFT {1000 * (point['ttft_p99'] or 0):6.1f} ms (median of "
                  f"{len(windows[arm.name])}) {'sustained' if point['sustained'] else 'NOT sustained'}", flush=True)
        standing = [arm for arm in standing if points[arm.name][-1]["sustained"]]
        if not standing:
            break
    return {name: {"max_sustainable_rate": max((p["rate"] for p in arm_points if p["sustained"]), default=0.0),
                   "points": arm_points} for name, arm_points in points.items()}


def _combine(windows: list[dict]) -> dict:
    """Several windows at one rate: medians of the latencies and CPU, failures summed."""
    def median(key):
        values = [window[key] for window in windows if window[key] is not None]
        return statistics.median(values) if values else None

    return {"ttft_p50": median("ttft_p50"), "ttft_p99": median("ttft_p99"), "e2e_p50": median("e2e_p50"),
            "e2e_p99": median("e2e_p99"), "cpu_ms_per_request": median("cpu_ms_per_request"),
            "throughput": median("throughput"), "failed": sum(window["failed"] for window in windows),
            "all_finished": all(window["all_finished"] for window in windows),
            "window_ttft_p99": [window["ttft_p99"] for window in windows]}


async def benchmark(args: argparse.Namespace, arms: list[Arm]) -> dict:
    prompts = synthetic_prompts(200, 20, 60, seed=0)
    results: dict = {arm.name: {c: [] for c in args.concurrency} for arm in arms}
    for round_index in range(args.rounds):
        order = arms[round_index % len(arms):] + arms[:round_index % len(arms)]
        for arm in order:
            for concurrency in args.concurrency:
                bounds = Bounds(requests=args.requests, warmup=max(concurrency, 10), timeout=30.0)
                cell = await measure(arm, Shape(concurrency=concurrency), bounds, prompts, args, arms)
                results[arm.name][concurrency].append(cell)
                print(f"round {round_index + 1} {arm.name:15s} c={concurrency:<3d} "
                      f"TTFT p50 {1000 * (cell['ttft_p50'] or 0):6.1f} ms  CPU {cell['cpu_ms_per_request']:5.1f} "
                      f"ms/req  failed {cell['failed']}", flush=True)
    rates = await max_rates(arms, prompts, args) if args.rates else {}
    for name, found in rates.items():
        print(f"{name:17s} max sustainable ≈ {found['max_sustainable_rate']:g} req/s", flush=True)
    return {"cells": results, "rates": rates, "baselines": {arm.name: arm.baseline for arm in arms}}


def summarise(raw: dict, concurrency: list[int]) -> list[dict]:
    """Per arm and concurrency: medians over rounds of the added latency against `direct` of the same round."""
    rows = []
    for arm, cells in raw["cells"].items():
        direct = raw["cells"][raw.get("baselines", {}).get(arm, "direct")]
        for c in concurrency:
            row = {"arm": arm, "concurrency": c}
            for key in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
                added = [cell[key] - base[key] for cell, base in zip(cells[c], direct[c], strict=True)
                         if cell[key] is not None and base[key] is not None]
                row[f"added_{key}_ms"] = 1000 * statistics.median(added) if added else None
            row["cpu_ms_per_request"] = statistics.median(cell["cpu_ms_per_request"] for cell in cells[c])
            row["failed"] = sum(cell["failed"] for cell in cells[c])
            row["max_sustainable_rate"] = raw["rates"].get(arm, {}).get("max_sustainable_rate")
            rows.append(row)
    return rows


def table(rows: list[dict]) -> Table:
    out = Table(title="gateway overhead vs each arm's direct server: the zero-work one, or vLLM (medians over rounds)",
                title_justify="left")
    for column in ("arm", "conc.", "+TTFT p50", "+TTFT p99", "+e2e p50", "+e2e p99", "CPU ms/req",
                   "max req/s", "failed"):
        out.add_column(column, justify="left" if column == "arm" else "right")

    def ms(value):
        return "—" if value is None else f"{value:+.1f}"

    for row in rows:
        rate = row["max_sustainable_rate"]
        out.add_row(row["arm"], str(row["concurrency"]), ms(row["added_ttft_p50_ms"]), ms(row["added_ttft_p99_ms"]),
                    ms(row["added_e2e_p50_ms"]), ms(row["added_e2e_p99_ms"]),
                    "—" if row["arm"].endswith("direct") else f"{row['cpu_ms_per_request']:.1f}",
                    "—" if rate is None else f"{rate:g}", str(row["failed"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rates", type=float, nargs="*", default=[10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300],
                        help="offered rates for the max-sustainable search (empty: skip it)")
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="seconds of one window at one rate")
    parser.add_argument("--rate-repeats", type=int, default=3, help="windows per arm and rate (median p99 judged)")
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--itl-ms", type=float, default=1.0, help="the zero server's inter-token delay")
    parser.add_argument("--litellm", help="LiteLLM's `litellm` binary (in its own virtualenv)")
    parser.add_argument("--redis", help="redis://… of a running redis-server: adds the Redis-limited arm")
    parser.add_argument("--baseline", help="another checkout (a git worktree): adds its handoff arm, to compare")
    parser.add_argument("--vllm", help="the python of vLLM's environment (`./dev setup vllm`: .venv-vllm/bin/python): "
                        "adds `vllm direct` and the handoff arm in front of it")
    parser.add_argument("--only", nargs="*", help="run only these arms (and `direct`), by name")
    parser.add_argument("--workers", type=int, nargs="*", default=[2],
                        help="also run the handoff arm with this many gateway workers (throughput scaling)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="pin the load generator + zero server and each one-worker gateway to separate cores")
    parser.add_argument("--out", type=Path, default=Path("runs/overhead"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = Cores.split(args.pin)
    if cores.client:
        os.sched_setaffinity(0, cores.client)  # the load generator; the zero server inherits it
        print(f"cores: load generator and zero server {sorted(cores.client)}, one gateway worker "
              f"{sorted(cores.gateway)}, several workers {sorted(cores.workers)}", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        zero, arms = start_arms(args, Path(temporary), cores)
        try:
            raw = asyncio.run(benchmark(args, arms))
        finally:
            for process in [zero] + [process for arm in arms for process in (arm.process, arm.backend) if process]:
                process.terminate()
                process.wait(timeout=20)
    rows = summarise(raw, args.concurrency)
    (args.out / "overhead.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "raw": raw, "rows": rows}, indent=1))
    Console(width=140).print(table(rows))
    print(f"written to {args.out}/overhead.json")


if __name__ == "__main__":
    main()
