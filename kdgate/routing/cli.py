"""`kdgate router`: collect routing records, calibrate a policy file, evaluate policies on the demo task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

app = typer.Typer(help="Confidence routing: records, calibration, evaluation.", no_args_is_help=True)

PREFIX_HELP = "student tokens held back before deciding: a number, or `full` for the whole answer"


def parse_prefix(value: str) -> int | None:
    if value == "full":
        return None
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"{value!r}: use a whole number of tokens >= 1, or `full`")
    return int(value)


TOOLS_HELP = ("the demo's tool task: each ticket's first turn with the `lookup_order` tool offered (`tool_choice: "
              "auto`), judged by tool-call exact match (name and arguments); without --config, on the demo's "
              "tool-calling pair")
SCHEMA_HELP = ("answer under the demo's answer schema (`response_format: json_schema`), as a client asking for JSON "
               "would: routing measured under the grammar, handoffs continued under the grammar of the rest")

@app.command()
def collect(
    out: Path = typer.Option(..., dir_okay=False, help="JSONL file to write"),
    split: str = typer.Option("test", help="demo split: val (for fitting) or test (held out)"),
    examples: int = typer.Option(1000, min=1, help="tickets"),
    seed: int = typer.Option(0),
    top_logprobs: int = typer.Option(5, min=1, max=20, help="alternatives per student token"),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="gateway YAML settings (backends)"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads of each local backend (default: the "
                                       "settings' `threads`; 1 is fastest for the demo models)"),
    schema: bool = typer.Option(False, help=SCHEMA_HELP),
    tools: bool = typer.Option(False, help=TOOLS_HELP),
) -> None:
    """Answer demo tickets with the student (keeping its logprobs) and the teacher; label both; write records.

    Example:  kdgate router collect --split val --examples 1000 --out runs/records-val.jsonl
    """
    from kdgate.routing.collect import answer_schema, collect_from_settings
    from router.records import write_records

    records = asyncio.run(collect_from_settings(config, split, examples, seed, top_logprobs, threads,
                                                answer_schema() if schema else None, tools))
    write_records(out, records)
    student = sum(bool(record.student_correct) for record in records) / len(records)
    teacher = sum(bool(record.teacher_correct) for record in records) / len(records)
    typer.echo(f"{len(records)} records -> {out}  (student right {student:.1%}, teacher right {teacher:.1%})")


@app.command()
def calibrate(
    data: Path = typer.Option(..., exists=True, dir_okay=False, help="labelled routing records (JSONL)"),
    target_teacher_fraction: float = typer.Option(..., min=0.0, max=1.0, help="share of traffic for the teacher"),
    out: Path = typer.Option(Path("router-policy.json"), dir_okay=False, help="policy file the gateway loads"),
    prefix_tokens: str = typer.Option("4", help=PREFIX_HELP),
    scorer: str = typer.Option("logistic", help="signal (fixed formula), logistic or isotonic"),
    signal: str | None = typer.Option(None, help="signal/isotonic: which signal (default: the best on the data)"),
    top_logprobs: int = typer.Option(5, min=1, max=20, help="alternatives per token the gateway asks the student"),
) -> None:
    """Fit the scorer and the threshold that sends the target share of the records to the teacher.

    Example:  kdgate router calibrate --data runs/records-val.jsonl --target-teacher-fraction 0.2 --prefix-tokens full
    """
    from router.calibration import calibrate_threshold, teacher_fraction
    from router.comparison import correct, scores_of, windows
    from router.fitting import fit_scorer
    from router.policy_file import Calibration, PolicyFile, save_policy
    from router.records import labelled, read_records

    prefix = parse_prefix(prefix_tokens)
    records = labelled(read_records(data), need_teacher=scorer != "logistic" and signal is None)
    record_windows = windows(records, prefix)
    student, teacher = correct(records)
    fitted = fit_scorer(scorer, record_windows, student, teacher, signal)
    scores = scores_of(fitted, record_windows)
    threshold = calibrate_threshold(scores, target_teacher_fraction)
    realised = teacher_fraction(scores, threshold)
    save_policy(PolicyFile(prefix_tokens=prefix, top_logprobs=top_logprobs, scorer=fitted, threshold=threshold,
                           calibration=Calibration(data=str(data), examples=len(records),
                                                   target_teacher_fraction=target_teacher_fraction,
                                                   realised_teacher_fraction=realised)), out)
    typer.echo(f"{out}: {fitted.kind} scorer, N={prefix or 'full'}, threshold {threshold:.4g} sends "
               f"{realised:.1%} of {len(records)} records to the teacher (target {target_teacher_fraction:.1%})")


@app.command("eval")
def evaluate(
    out: Path = typer.Option(Path("runs/router-eval"), file_okay=False, help="report folder (records are cached here)"),
    fit: Path | None = typer.Option(None, dir_okay=False, help="labelled records to fit and calibrate on "
                                    "(default: collect the demo's val split)"),
    data: Path | None = typer.Option(None, dir_okay=False, help="labelled held-out records to judge on "
                                     "(default: collect the demo's test split)"),
    examples: int = typer.Option(1000, min=10, help="tickets per collected split"),
    target_teacher_fraction: float = typer.Option(0.2, min=0.0, max=1.0),
    prefixes: list[str] = typer.Option(["1", "4", "16", "32", "full"], "--prefix", help=PREFIX_HELP),
    kinds: list[str] = typer.Option(["signal", "logistic", "isotonic"], "--scorer"),
    ttft_requests: int = typer.Option(30, min=0, help="requests per configuration for TTFT (0: skip)"),
    handoff: bool = typer.Option(True, help="also measure mid-stream handoff at equal teacher token cost"),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="gateway YAML settings (backends)"),
    schema: bool = typer.Option(False, help=SCHEMA_HELP),
    tools: bool = typer.Option(False, help=TOOLS_HELP),
) -> None:
    """Accuracy vs teacher share for every prefix length and scorer, APGR/CPT, drift, TTFT: JSON, PNG, Markdown.

    Example:  kdgate router eval --out runs/router-eval
    """
    from kdgate.routing.evaluate import run_evaluation

    run_evaluation(out, fit, data, examples, target_teacher_fraction, [parse_prefix(p) for p in prefixes], kinds,
                   ttft_requests, config, handoff, schema, tools)
