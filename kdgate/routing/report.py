"""The routing evaluation's outputs: a JSON report, a PNG of the curves, and a Markdown table for the README."""

from __future__ import annotations

import json
from pathlib import Path

from router.comparison import PolicyResult


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1, default=_plain) + "\n")


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to the report")


def plot(path: Path, results: list[PolicyResult], kind: str, handoff: list[dict] | None = None,
         cost_curves: dict[str, tuple] | None = None) -> None:
    """Left: accuracy against the share of requests sent to the teacher (random, oracle, `kind` scorers per
    prefix length). Right, with handoff rows: accuracy against the share of teacher tokens, handoff beside
    whole-request escalation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if handoff else 1
    figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5), squeeze=False)
    left = axes[0][0]
    for result in results:
        if result.scorer is not None and result.scorer.kind != kind:
            continue
        style = {"random": dict(color="grey", linestyle="--"), "oracle": dict(color="black", linestyle=":")}
        label = f"{result.name} (APGR {result.curve.apgr():.2f})"
        left.plot(100 * result.curve.fractions, 100 * result.curve.accuracy, label=label,
                  **style.get(result.name, {}))
    _axes(left, "requests sent to the teacher (%)", "Accuracy vs teacher share of requests")
    if handoff:
        right = axes[0][1]
        for name, (tokens, accuracy) in (cost_curves or {}).items():
            right.plot(100 * tokens, 100 * accuracy, label=f"{name}, whole request escalated")
        right.plot([100 * row["teacher_token_share"] for row in handoff], [100 * row["accuracy"] for row in handoff],
                   "ko-", label="mid-stream handoff (one point per handoff probability)")
        for row in handoff:
            right.annotate(f"p<{row['min_prob']}", (100 * row["teacher_token_share"], 100 * row["accuracy"]),
                           textcoords="offset points", xytext=(4, -10), fontsize=7)
        _axes(right, "teacher tokens generated (% of sending everything to the teacher)",
              "Accuracy vs teacher token cost")
    figure.suptitle("Demo task, 1,000 held-out tickets")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _axes(axes, xlabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel("whole-answer accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")


def policy_table(results: list[PolicyResult], target: float) -> str:
    lines = [f"| policy | APGR | CPT(50 %) | CPT(80 %) | teacher share at the threshold calibrated to {target:.0%} |",
             "|---|---|---|---|---|"]
    for result in results:
        row = result.row()
        fraction = row["held_out_teacher_fraction"]
        share = "" if fraction is None else f"{100 * fraction:.1f} %"
        lines.append(f"| {row['policy']} | {row['apgr']:.3f} | {100 * row['cpt50']:.0f} % | "
                     f"{100 * row['cpt80']:.0f} % | {share} |")
    return "\n".join(lines)


def ttft_table(ttft: dict[str, dict]) -> str:
    base = ttft["student_only"]["ttft_p50_s"]
    lines = ["| configuration | TTFT p50 | TTFT p90 | added p50 vs student only | teacher share "
             "| TTFT p50 when escalated |", "|---|---|---|---|---|---|"]
    for name, summary in ttft.items():
        escalated = summary["ttft_p50_escalated_s"]
        p90 = "—" if summary["ttft_p90_s"] is None else f"{1000 * summary['ttft_p90_s']:.0f} ms"  # one request
        lines.append(f"| {name} | {1000 * summary['ttft_p50_s']:.0f} ms | {p90} | "
                     f"{1000 * (summary['ttft_p50_s'] - base):+.0f} ms | {100 * summary['teacher_fraction']:.0f} % | "
                     + ("" if escalated is None else f"{1000 * escalated:.0f} ms") + " |")
    return "\n".join(lines)
