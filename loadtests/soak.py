"""Soak and overload: minutes of steady streaming load through the gateway, then more load than it can take.

    python -m loadtests.soak --minutes 10 --rate 20 --out runs/soak

The gateway (`kdgate serve`, routing active: mid-stream handoff watching every token, an API key required, per-key
limits far above the load) fronts the zero-work streaming server (`kdgate loadtest zero-server`: the measuring
instrument, so that what grows is the gateway's). As in the overhead benchmark, the load generator and the zero
server run on the first core and the gateway on the second. Reported:

- **steady**: `--minutes` of Poisson arrivals at `--rate`, in one-minute windows: errors, p99 TTFT per window and
  its drift (last window against the first), the gateway's resident memory every 10 s and its growth from the end
  of the first minute (allocator warm-up) to the end. Targets: 0 errors, RSS growth < 10 %, p99 drift < 20 %.
- **overload**: a backend with a batch's capacity (a zero server generating `--backend-slots` answers at once, the
  rest waiting, as vLLM's `max_num_seqs` makes them), offered `--overload-factor` × that capacity, through two
  gateways: one with as many admission slots and no queue (`limits.max_in_flight`, `max_queued: 0`), one with the
  defaults. For each: the share shed with 429/503 + Retry-After, other failures, and the p99 TTFT of the admitted
  requests against the same gateway's p99 at a calm rate (target: within 2×).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.threaded import free_port
from loadtests.overhead import MODEL, Cores, kdgate_config, keyed, start_process
from loadtests.runner import Bounds, Shape, Target, run
from loadtests.workload import BodySettings, synthetic_prompts


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def p99(values: list[float]) -> float | None:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else None)


def gateway(folder: Path, zero_url: str, extra: dict, name: str, cores) -> tuple[subprocess.Popen, str]:
    """`kdgate serve` with routing active (handoff watching every token), a key and `extra` settings."""
    config = kdgate_config(folder, name, zero_url, {"policy": "student_only",
                                                   "handoff": {"enabled": True, "min_prob": 0.01}}, extra)
    port = free_port()
    process = start_process([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port), "--config",
                             str(config)], f"http://127.0.0.1:{port}/readyz", log=folder / f"{name}.log",
                            cores=cores.gateway)
    return process, f"http://127.0.0.1:{port}/v1"


async def steady(url: str, key: str, pid: int, args) -> dict:
    target = Target(f"{url}/chat/completions", {"Authorization": f"Bearer {key}"},
                    BodySettings(model=MODEL, max_tokens=args.output_tokens, logprobs=None))
    prompts = synthetic_prompts(200, 20, 60, seed=3)
    memory: list[tuple[float, int]] = []
    started = time.monotonic()

    async def sample_memory() -> None:
        while True:
            memory.append((time.monotonic() - started, rss_bytes(pid)))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample_memory())
    windows = []
    try:
        for minute in range(args.minutes):
            result = await run(target, prompts, Shape(rate=args.rate), Bounds(duration=60.0, timeout=30.0),
                               seed=minute)
            ok = [record.ttft for record in result.records if record.ok and record.ttft is not None]
            errors = [record.error for record in result.records if not record.ok]
            windows.append({"minute": minute + 1, "requests": len(result.records), "errors": len(errors),
                            "first_errors": errors[:3], "ttft_p50_ms": 1000 * statistics.median(ok) if ok else None,
                            "ttft_p99_ms": 1000 * p99(ok) if ok else None})
            print(f"steady minute {minute + 1}: {windows[-1]}", flush=True)
    finally:
        sampler.cancel()
    memory.append((time.monotonic() - started, rss_bytes(pid)))
    after_first = next((rss for at, rss in memory if at >= 60.0), memory[0][1])
    return {"windows": windows, "memory": memory, "errors": sum(w["errors"] for w in windows),
            "rss_first_minute_mb": after_first / 2**20, "rss_end_mb": memory[-1][1] / 2**20,
            "rss_growth": memory[-1][1] / after_first - 1.0,
            "p99_drift": windows[-1]["ttft_p99_ms"] / windows[0]["ttft_p99_ms"] - 1.0}


async def overload(url: str, key: str, args, capacity: float) -> dict:
    """A calm window, then `overload_factor` × `capacity` offered: what is shed, and what the admitted wait."""
    target = Target(f"{url}/chat/completions", {"Authorization": f"Bearer {key}"},
                    BodySettings(model=MODEL, max_tokens=args.backend_tokens, logprobs=None))
    prompts = synthetic_prompts(200, 20, 60, seed=4)
    calm = await run(target, prompts, Shape(rate=args.calm_rate), Bounds(duration=20.0, timeout=30.0), seed=100)
    calm_ttft = [r.ttft for r in calm.records if r.ok and r.ttft is not None]
    offered = args.overload_factor * capacity
    hot = await run(target, prompts, Shape(rate=offered), Bounds(duration=30.0, timeout=30.0, grace=10.0),
                    seed=102)
    admitted = [r.ttft for r in hot.records if r.ok and r.ttft is not None]
    shed = [r for r in hot.records if r.status in (429, 503)]
    other = [r for r in hot.records if not r.ok and r.status not in (429, 503)]
    return {"calm_rate": args.calm_rate, "calm_ttft_p99_ms": 1000 * p99(calm_ttft), "offered_rps": offered,
            "requests": len(hot.records), "admitted": len(admitted), "shed": len(shed),
            "shed_share": len(shed) / len(hot.records), "other_failures": len(other),
            "first_other": [r.error for r in other[:3]],
            "admitted_ttft_p99_ms": 1000 * p99(admitted) if admitted else None,
            "p99_ratio": p99(admitted) / p99(calm_ttft) if admitted else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="steady Poisson arrivals, req/s")
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--backend-slots", type=int, default=8, help="the overload backend's batch capacity; the "
                        "shedding gateway gets as many admission slots")
    parser.add_argument("--backend-itl-ms", type=float, default=10.0, help="the overload backend's token gap")
    parser.add_argument("--backend-tokens", type=int, default=16, help="answer length in the overload phase")
    parser.add_argument("--calm-rate", type=float, default=10.0, help="req/s of the overload phase's calm window")
    parser.add_argument("--overload-factor", type=float, default=3.0, help="offered rate over the backend's "
                        "capacity (slots ÷ answer time)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    key, guarded = keyed()
    cores = Cores.split(pin=True)
    if cores.client:
        os.sched_setaffinity(0, cores.client)  # the load generator and the zero server; the gateway on its own core
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        zero_port = free_port()
        zero = start_process([sys.executable, "-m", "kdgate.cli", "loadtest", "zero-server", "--port",
                              str(zero_port), "--output-tokens", str(args.output_tokens)],
                             f"http://127.0.0.1:{zero_port}/v1/models", log=folder / "zero.log")
        zero_url = f"http://127.0.0.1:{zero_port}/v1"
        processes = [zero]
        try:
            soaked, url = gateway(folder, zero_url, guarded, "steady", cores)
            processes.append(soaked)
            steady_result = asyncio.run(steady(url, key, soaked.pid, args))
            bounded_port = free_port()  # a backend with a batch's capacity: `--backend-slots` answers at once
            processes.append(start_process(
                [sys.executable, "-m", "kdgate.cli", "loadtest", "zero-server", "--port", str(bounded_port),
                 "--output-tokens", str(args.backend_tokens), "--itl-ms", str(args.backend_itl_ms), "--slots",
                 str(args.backend_slots)], f"http://127.0.0.1:{bounded_port}/v1/models", log=folder / "bounded.log"))
            bounded_url = f"http://127.0.0.1:{bounded_port}/v1"
            capacity = args.backend_slots / (args.backend_tokens * args.backend_itl_ms / 1000)
            overload_result = {"capacity_rps": capacity}
            for name, limits in (("shedding", {"max_in_flight": args.backend_slots, "max_queued": 0}),
                                 ("admitting (defaults)", {})):
                settings = guarded | {"limits": guarded["limits"] | limits}
                process, url = gateway(folder, bounded_url, settings, name.split()[0], cores)
                processes.append(process)
                overload_result[name] = asyncio.run(overload(url, key, args, capacity))
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=20)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "steady": steady_result,
              "overload": overload_result}
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    s, o = steady_result, overload_result
    print(f"steady {args.minutes} min at {args.rate:g} req/s: {s['errors']} errors, RSS {s['rss_first_minute_mb']:.1f} "
          f"→ {s['rss_end_mb']:.1f} MB ({100 * s['rss_growth']:+.1f} %), p99 TTFT {s['windows'][0]['ttft_p99_ms']:.1f} "
          f"→ {s['windows'][-1]['ttft_p99_ms']:.1f} ms ({100 * s['p99_drift']:+.1f} %)")
    for name in ("shedding", "admitting (defaults)"):
        arm = o[name]
        admitted = "—" if arm["admitted_ttft_p99_ms"] is None else f"{arm['admitted_ttft_p99_ms']:.1f} ms"
        ratio = "—" if arm["p99_ratio"] is None else f"{arm['p99_ratio']:.2f}×"
        print(f"overload, {name}: capacity {o['capacity_rps']:.0f} req/s, offered {arm['offered_rps']:.0f}: "
              f"{100 * arm['shed_share']:.0f} % shed with 429/503, {arm['other_failures']} other failures; admitted "
              f"p99 TTFT {admitted} against {arm['calm_ttft_p99_ms']:.1f} ms at {arm['calm_rate']:g} req/s ({ratio})")
    print(f"written to {args.out}/soak.json")


if __name__ == "__main__":
    main()
