"""`kdgate router eval`: one command from the demo models to the README's routing table and plot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from kdgate.routing import report
from kdgate.routing.collect import answer_schema, collect_from_settings, demo_settings
from kdgate.routing.handoff_eval import evaluate_handoff, handoff_table, prefix_routing_cost_curve
from router.comparison import PolicyResult, compare
from router.drift import drift_report
from router.policy_file import Calibration, PolicyFile, save_policy
from router.records import read_records, write_records

# Drifted live traffic for the recalibration check: three times the calibration share of two-order tickets.
DRIFT_WEIGHTS = {"two_orders": 3.0, "two_orders_renamed": 3.0}
PLOT_KIND = "logistic"
HANDOFF_TTFT_MIN_PROB = 0.9  # the handoff configuration whose TTFT is measured (its stream starts at once)


def records(path: Path | None, default: Path, split: str, examples: int, config: Path | None,
            structured: dict | None = None, with_tools: bool = False):
    """The given records, or the demo's (cached in `default`, one file per constraint and task)."""
    if path is None:
        suffix = ("-schema" if structured else "") + ("-tools" if with_tools else "")
        path = default.with_name(f"{default.stem}{suffix}{default.suffix}")
        if not path.is_file():
            write_records(path, asyncio.run(collect_from_settings(config, split, examples, seed=0, top_logprobs=5,
                                                                  structured=structured, with_tools=with_tools)))
    return read_records(path), path


def run_evaluation(out: Path, fit: Path | None, data: Path | None, examples: int, target: float,
                   prefixes: list[int | None], kinds: list[str], ttft_requests: int, config: Path | None,
                   with_handoff: bool = True, schema: bool = False, with_tools: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    structured = answer_schema() if schema else None
    fit_records, fit_path = records(fit, out / "records-val.jsonl", "val", examples, config, structured, with_tools)
    held_records, held_path = records(data, out / "records-test.jsonl", "test", examples, config, structured,
                                      with_tools)
    results = compare(fit_records, held_records, prefixes, kinds, target)
    policies = save_policies(out, results, target, fit_path, len(fit_records))
    confidence = [result for result in results if result.scorer is not None]
    best = max(confidence, key=lambda result: result.curve.apgr())
    drift = drift_report(best.scorer, best.prefix_tokens, best.threshold, held_records, target, DRIFT_WEIGHTS)
    handoff = asyncio.run(measure_handoff(results, held_records, config)) if with_handoff else None
    ttft = measure_ttft(policies, target, ttft_requests, config) if ttft_requests else None
    summary = {"fit": str(fit_path), "held_out": str(held_path), "target_teacher_fraction": target,
               "policies": [result.row() for result in results], "best": best.name, "drift": drift, "ttft": ttft,
               "handoff": handoff,
               "curves": {result.name: {"fractions": result.curve.fractions, "accuracy": result.curve.accuracy}
                          for result in results}}
    report.write_json(out / "report.json", summary)
    report.plot(out / "curves.png", results, PLOT_KIND, handoff, cost_curves(results, held_records))
    tables = [report.policy_table(results, target)]
    if ttft:
        tables.append(report.ttft_table(ttft))
    if handoff:
        tables.append(handoff_table(handoff, calls=any(record.tools for record in held_records)))
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


def cost_curves(results: list[PolicyResult], records) -> dict[str, tuple]:
    """Accuracy against teacher tokens (as a share of all-teacher) for whole-request escalation, N=4 and full."""
    total = sum(record.teacher_completion_tokens or 0 for record in records)
    curves = {}
    for result in results:
        if result.scorer is not None and result.scorer.kind == PLOT_KIND and result.prefix_tokens in (4, None):
            tokens, accuracy = prefix_routing_cost_curve(result.held_out_scores, records)
            curves[result.name.removesuffix(f" {PLOT_KIND}")] = (tokens / total, accuracy)
    return curves


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


async def measure_handoff(results: list[PolicyResult], records, config: Path | None) -> list[dict]:
    """Handoff against whole-request escalation by the logistic policies, at equal teacher token cost."""
    from runtime.backends.factory import open_backends

    prefix_scores = {result.name.removesuffix(" logistic"): result.held_out_scores for result in results
                     if result.scorer is not None and result.scorer.kind == "logistic"}
    settings = demo_settings(config, any(record.tools for record in records))
    async with open_backends(settings.backends(), settings.http) as backends:
        return await evaluate_handoff(backends["teacher"], records, prefix_scores)


def measure_ttft(policies: dict[str, Path], target: float, requests: int, config: Path | None) -> dict:
    from distill.demo import task
    from gateway.settings import HandoffSettings, RoutingSettings, load_settings
    from kdgate.routing.ttft import measure

    configs = {"student_only": RoutingSettings(policy="student_only"),
               "teacher_only": RoutingSettings(policy="teacher_only"),
               "random": RoutingSettings(policy="random", teacher_fraction=target, seed=0)}
    configs |= {name: RoutingSettings(policy="confidence", policy_file=path) for name, path in policies.items()}
    configs[f"student + handoff below p={HANDOFF_TTFT_MIN_PROB}"] = RoutingSettings(
        policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=HANDOFF_TTFT_MIN_PROB))
    conversations = [ticket.messages() for ticket in task.take("test", requests, seed=7)]
    return measure(configs, conversations, load_settings(config))
