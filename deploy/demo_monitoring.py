"""Watch route mix, TTFT and student–teacher divergence move, on one machine, and save the dashboard's panels.

    .venv/bin/python deploy/demo_monitoring.py --minutes 6 --out docs/monitoring.png

Starts `kdgate serve` on the demo models (confidence routing with the committed calibrated policy, a quarter of the
student's answers shadowed by the teacher, a SQLite shadow store), a real Prometheus (Debian's `prometheus`)
scraping it every 2 s with the project's rules, and drives streaming traffic through the `openai` client: normal
demo traffic for the first half, then drifted traffic (only two-order tickets, where the student is weakest) for
the second. At the end it queries Prometheus over the run and draws the Grafana dashboard's main panels (the same
PromQL, with `$__rate_interval` set to 1m) into one PNG. Prometheus stays up with `--keep` to explore further
(http://127.0.0.1:9090); point Grafana at it and import deploy/grafana/kdgate.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.demo import task  # noqa: E402
from gateway.threaded import wait_until_up  # noqa: E402

SHOWN = ["TTFT by route", "Route mix by reason", "Teacher fraction vs target",
         "Student-teacher KL (mean per token)", "Agreement with the teacher", "Shadow queue and drops"]


def start_gateway(port: int, store: Path) -> subprocess.Popen:
    env = os.environ | {
        "KDGATE_PORT": str(port), "KDGATE_ROUTING__POLICY": "confidence",
        "KDGATE_ROUTING__POLICY_FILE": str(ROOT / "distill/demo/artifacts/router-policy.json"),
        "KDGATE_ROUTING__HANDOFF__ENABLED": "false",  # the whole-answer cascade alone: its teacher share has a target
        "KDGATE_SHADOW__SAMPLE_RATE": "0.25", "KDGATE_SHADOW__CONCURRENCY": "4",
        "KDGATE_SHADOW__STORE_URL": f"sqlite:///{store}", "KDGATE_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve"], cwd=ROOT, env=env)
    wait_until_up(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
    return process


def start_prometheus(port: int, gateway_port: int, workdir: Path) -> subprocess.Popen:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed: apt-get install prometheus")
    config = workdir / "prometheus.yml"
    config.write_text("global: {scrape_interval: 2s, evaluation_interval: 10s}\n"
                      f"rule_files: [{ROOT / 'deploy/prometheus/rules/kdgate.yml'}]\n"
                      "scrape_configs:\n  - job_name: kdgate-gateway\n"
                      f"    static_configs: [{{targets: ['127.0.0.1:{gateway_port}']}}]\n")
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/-/ready", process)
    return process


def drive(gateway_port: int, seconds: float, concurrency: int) -> None:
    """Normal traffic, then drifted traffic (two-order tickets only), `concurrency` streams at a time."""
    client = OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="unused", max_retries=0)
    normal = itertools.cycle(task.take("test", 1000, seed=21))
    drifted = itertools.cycle([t for t in task.take("test", 2000, seed=22) if t.factors["shape"] != "one_order"])
    started = time.monotonic()
    lock = threading.Lock()

    def worker() -> None:
        while (elapsed := time.monotonic() - started) < seconds:
            with lock:
                ticket = next(normal if elapsed < seconds / 2 else drifted)
            for _ in client.chat.completions.create(model="kdgate-demo", messages=ticket.messages(), temperature=0,
                                                    max_tokens=96, stream=True):
                pass

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def render(prometheus: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {spec[0]: spec for spec in runpy.run_path(str(ROOT / "deploy/grafana/build_dashboard.py"))["PANELS"]}
    figure, axes = plt.subplots(2, 3, figsize=(18, 8.5))
    for axis, title in zip(axes.flat, SHOWN, strict=True):
        _, unit, targets, _ = panels[title]
        for expr, legend in targets:
            query = expr.replace("$__rate_interval", "1m")
            result = httpx.get(f"{prometheus}/api/v1/query_range", timeout=30, params={
                "query": query, "start": start, "end": end, "step": 5}).json()["data"]["result"]
            for series in result:
                label = legend
                for key, value in series["metric"].items():
                    label = label.replace("{{" + key + "}}", value)
                times = [(float(t) - start) / 60 for t, _ in series["values"]]
                axis.plot(times, [float(v) for _, v in series["values"]], label=label.replace("{{instance}}", ""))
        axis.axvline((end - start) / 120, color="grey", linestyle=":", linewidth=1)
        axis.set_title(title + (" (s)" if unit == "s" else ""))
        axis.set_xlabel("minutes (dotted: drifted traffic starts)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("kdgate on the demo models: Prometheus over the run, drawn from the dashboard's own queries")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/monitoring.png"))
    parser.add_argument("--gateway-port", type=int, default=8000)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--keep", action="store_true", help="leave the gateway and Prometheus running")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kdgate-monitoring-"))
    gateway = start_gateway(args.gateway_port, workdir / "shadow.sqlite3")
    prometheus = start_prometheus(args.prometheus_port, args.gateway_port, workdir)
    try:
        time.sleep(4)  # a first scrape before traffic
        start = time.time()
        drive(args.gateway_port, args.minutes * 60, args.concurrency)
        time.sleep(6)
        render(f"http://127.0.0.1:{args.prometheus_port}", start, time.time(), args.out)
        if args.keep:
            print(f"Prometheus: http://127.0.0.1:{args.prometheus_port}  gateway: "
                  f"http://127.0.0.1:{args.gateway_port}/v1  (Ctrl-C stops both)")
            gateway.wait()
    finally:
        for process in (prometheus, gateway):
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
