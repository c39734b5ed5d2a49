"""`kdgate router eval`: one command from the demo models to the README's routing table and plot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from kdgate.routing import report
from kdgate.routing.collect import collect_from_settings
from router.comparison import PolicyResult, compare
from router.drift import drift_report
from router.policy_file import Calibration, PolicyFile, save_policy
from router.records import read_records, write_records

# Drifted live traffic for the recalibration check: three times the calibration share of two-order tickets.
DRIFT_WEIGHTS = {"two_orders": 3.0, "two_orders_renamed": 3.0}
PLOT_KIND = "logistic"


def records(path: Path | None, default: Path, split: str, examples: int, config: Path | None):
    if path is None:
        path = default
        if not path.is_file():
            write_records(path, asyncio.run(collect_from_settings(config, split, examples, seed=0, top_logprobs=5)))
    return read_records(path), path


def run_evaluation(out: Path, fit: Path | None, data: Path | None, examples: int, target: float,
                   prefixes: list[int | None], kinds: list[str], ttft_requests: int, config: Path | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    fit_records, fit_path = records(fit, out / "records-val.jsonl", "val", examples, config)
    held_records, held_path = records(data, out / "records-test.jsonl", "test", examples, config)
    results = compare(fit_records, held_records, prefixes, kinds, target)
    policies = save_policies(out, results, target, fit_path, len(fit_records))
    confidence = [result for result in results if result.scorer is not None]
    best = max(confidence, key=lambda result: result.curve.apgr())
    drift = drift_report(best.scorer, best.prefix_tokens, best.threshold, held_records, target, DRIFT_WEIGHTS)
    ttft = measure_ttft(policies, target, ttft_requests, config) if ttft_requests else None
    summary = {"fit": str(fit_path), "held_out": str(held_path), "target_teacher_fraction": target,
               "policies": [result.row() for result in results], "best": best.name, "drift": drift, "ttft": ttft,
               "curves": {result.name: {"fractions": result.curve.fractions, "accuracy": result.curve.accuracy}
                          for result in results}}
    report.write_json(out / "report.json", summary)
    report.plot(out / "curves.png", results, PLOT_KIND)
    tables = [report.policy_table(results, target)]
    if ttft:
        tables.append(report.ttft_table(ttft))
    (out / "tables.md").write_text("\n\n".join(tables) + "\n")
    console = Console(width=160)
    for table in tables:
        console.print(Markdown(table))
    console.print(f"best: {best.name}; drift (more two-order tickets): frozen threshold sends "
                  f"{drift['frozen']['teacher_fraction_after_warm_up']:.1%}, online recalibration "
                  f"{drift['online']['teacher_fraction_after_warm_up']:.1%} (target {target:.0%}) after "
                  f"{drift['warm_up']} requests")
    console.print(f"wrote {out}/report.json, {out}/curves.png, {out}/tables.md and the policy files")
    return summary


def save_policies(out: Path, results: list[PolicyResult], target: float, fit_path: Path, examples: int
                  ) -> dict[str, Path]:
    """A policy file per prefix length (logistic scorer): what `kdgate serve` would load, and what TTFT runs."""
    paths = {}
    for result in results:
        if result.scorer is None or result.scorer.kind != "logistic":
            continue
        name = f"confidence N={result.prefix_tokens or 'full'}"
        path = out / f"policy-{result.prefix_tokens or 'full'}.json"
        save_policy(PolicyFile(prefix_tokens=result.prefix_tokens, scorer=result.scorer, threshold=result.threshold,
                               calibration=Calibration(data=str(fit_path), examples=examples,
                                                       target_teacher_fraction=target,
                                                       realised_teacher_fraction=result.fit_teacher_fraction)), path)
        paths[name] = path
    return paths


def measure_ttft(policies: dict[str, Path], target: float, requests: int, config: Path | None) -> dict:
    from distill.demo import task
    from gateway.settings import RoutingSettings, load_settings
    from kdgate.routing.ttft import measure

    configs = {"student_only": RoutingSettings(policy="student_only"),
               "teacher_only": RoutingSettings(policy="teacher_only"),
               "random": RoutingSettings(policy="random", teacher_fraction=target, seed=0)}
    configs |= {name: RoutingSettings(policy="confidence", policy_file=path) for name, path in policies.items()}
    conversations = [ticket.messages() for ticket in task.take("test", requests, seed=7)]
    return measure(configs, conversations, load_settings(config))
