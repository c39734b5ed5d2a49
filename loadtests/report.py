"""What a run leaves behind: a console table (rich), a JSON report with every request, a CSV row, PNG plots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

CSV_FIELDS = ("label", "shape", "requests", "failed", "error_rate", "request_throughput", "output_token_throughput",
              "goodput", "peak_concurrency", "ttft_median", "ttft_p90", "ttft_p99", "ttfc_median", "tpot_median",
              "itl_median", "itl_p99", "e2e_median", "e2e_p99", "queue_time_median", "offered_rate", "cost_per_1k",
              "all_teacher_cost_per_1k")


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f}"


def console_table(summary: dict, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("route", "share", "ok / all", "TTFT p50", "p90", "p99", "TTFC p50", "TPOT p50", "ITL p50",
                   "ITL p99", "e2e p50", "p99", "req/s", "out tok/s"):
        table.add_column(column, justify="left" if column == "route" else "right")
    routes = summary["routes"]
    groups = [("all", summary, 1.0)] + [(route, group, summary["route_mix"][route]) for route, group in routes.items()
                                        if set(routes) != {"unknown"}]  # a server that names no route: one row
    for name, group, share in groups:
        def stat(metric: str, key: str, group=group) -> str:
            return ms((group.get(metric) or {}).get(key))

        table.add_row(name, f"{share:.0%}", f"{group['succeeded']} / {group['requests']}", stat("ttft", "median"),
                      stat("ttft", "p90"), stat("ttft", "p99"), stat("ttfc", "median"), stat("tpot", "median"),
                      stat("itl", "median"), stat("itl", "p99"), stat("e2e", "median"), stat("e2e", "p99"),
                      f"{group['request_throughput']:.2f}", f"{group['output_token_throughput']:.0f}")
    table.caption = "milliseconds; TTFT = first content chunk, TTFC = first chunk of any kind"
    return table


def print_summary(summary: dict, title: str, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table
    console.print(console_table(summary, title))
    if "goodput" in summary:
        console.print(f"goodput {summary['goodput']:.2f} req/s ({summary['slo_attainment']:.1%} met the SLO)")
    if summary["peak_concurrency"]:
        console.print(f"peak concurrency {summary['peak_concurrency']}")
    versions = summary.get("student_versions")
    if versions:
        served = ", ".join(f"{name} {count}" for name, count in versions["requests"].items())
        several = versions["pairs_with_several_answers"]
        console.print(f"student versions: {served}; {versions['prompt_version_pairs']} (prompt, version) pairs, "
                      + ("each always got one answer" if not several else
                         f"[red]{several} got several answers (mixed streams, or sampling)[/red]")
                      + f"; {versions['prompts_served_by_several_versions']} prompts served by several versions, "
                      f"{versions['of_which_answered_differently']} of them answered differently")
    for reason, failure in summary["failures"].items():
        console.print(f"[red]{failure['count']} failed: {reason}[/red] — e.g. {failure['samples'][0]}")
    server = summary.get("server_ttft")
    if server:
        console.print(f"server-side TTFT (/metrics histogram delta, {server['count']} requests): "
                      f"p50 ≈ {ms(server['p50'])} ms, p99 ≈ {ms(server['p99'])} ms (bucket-interpolated)")
    cost = summary.get("server_cost")
    if cost:
        console.print(cost_line(cost))


def cost_line(cost: dict) -> str:
    """The gateway's cost per 1,000 answered requests, by route, against the all-teacher figure."""
    parts = ", ".join(f"{route} ${value:.4f}" for route, value in cost["by_route_per_1k"].items())
    saving = f": {cost['saving']:.0%} less" if cost["saving"] is not None else ""
    return (f"cost per 1,000 requests (the gateway's kdgate_cost_dollars_total over its {cost['answered']} answered "
            f"requests): ${cost['per_1k']:.4f} ({parts}) against ${cost['all_teacher_per_1k']:.4f} all-teacher"
            f"{saving}")


def csv_row(summary: dict, label: str, shape: str, offered_rate: float | None) -> dict:
    def stat(metric: str, key: str):
        return (summary.get(metric) or {}).get(key)

    return {"label": label, "shape": shape, "requests": summary["requests"], "failed": summary["failed"],
            "error_rate": summary["error_rate"], "request_throughput": summary["request_throughput"],
            "output_token_throughput": summary["output_token_throughput"], "goodput": summary.get("goodput"),
            "peak_concurrency": summary["peak_concurrency"], "ttft_median": stat("ttft", "median"),
            "ttft_p90": stat("ttft", "p90"), "ttft_p99": stat("ttft", "p99"), "ttfc_median": stat("ttfc", "median"),
            "tpot_median": stat("tpot", "median"), "itl_median": stat("itl", "median"), "itl_p99": stat("itl", "p99"),
            "e2e_median": stat("e2e", "median"), "e2e_p99": stat("e2e", "p99"),
            "queue_time_median": stat("queue_time", "median"), "offered_rate": offered_rate,
            "cost_per_1k": (summary.get("server_cost") or {}).get("per_1k"),
            "all_teacher_cost_per_1k": (summary.get("server_cost") or {}).get("all_teacher_per_1k")}


def append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1))


def can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plots skipped: matplotlib is missing (pip install 'kdgate[loadtest]')", file=sys.stderr)
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ttft_cdf(records: list, path: Path, title: str) -> None:
    """TTFT CDF per route (successful, non-warm-up requests)."""
    import numpy as np

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2))
    routes = sorted({r.route or "unknown" for r in records if r.ok and not r.warmup})
    for route in ["all", *routes] if len(routes) > 1 else routes:
        values = np.sort([1000 * r.ttft for r in records if r.ok and not r.warmup and r.ttft is not None
                          and (route == "all" or (r.route or "unknown") == route)])
        if values.size:
            axis.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                      label=f"{route} (n={values.size})", linewidth=2 if route == "all" else 1.3)
    axis.set_xlabel("time to first token (ms)")
    axis.set_ylabel("fraction of requests")
    axis.set_title(title if routes else f"{title}: no successful request")
    axis.grid(alpha=0.3)
    if routes:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    """TTFT and e2e (p50 and p99) against the achieved request rate, one point per run of a sweep."""
    plt = _pyplot()
    rows = sorted(rows, key=lambda row: row["request_throughput"])
    rate = [row["request_throughput"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, name in ((axes[0], "ttft", "TTFT"), (axes[1], "e2e", "end-to-end latency")):
        for key, style in (("median", "o-"), ("p99", "s--")):
            values = [1000 * row[f"{metric}_{key}"] if row.get(f"{metric}_{key}") is not None else float("nan")
                      for row in rows]
            axis.plot(rate, values, style, label=f"{key}")
        axis.set_xlabel("achieved request rate (req/s)")
        axis.set_ylabel(f"{name} (ms)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
