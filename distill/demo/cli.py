"""`kdgate demo build` and `kdgate demo eval`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distill.demo import (
    ARTIFACTS_DIR,
    CONFIGS_DIR,
    DEMO_STUDENT_DIR,
    DEMO_TEACHER_DIR,
    TOOLS_STUDENT_DIR,
    TOOLS_TEACHER_DIR,
)

app = typer.Typer(help="The embedded demo task: build and evaluate its teacher and student.", no_args_is_help=True)


def check_model_folders(**folders: Path) -> None:
    """Each option's folder is a Hugging Face model folder (config.json inside), or that option is refused (exit 2);
    called first in a command, before anything starts. Keyword: the option's name (`student_dir` for
    --student-dir)."""
    from runtime.settings import model_dir_problem

    for name, folder in folders.items():
        problem = model_dir_problem(folder)
        if problem:
            raise typer.BadParameter(problem, param_hint=f"--{name.replace('_', '-')}")


@app.command()
def build(
    out: Path = typer.Option(ARTIFACTS_DIR, help="where the teacher/ and student/ model folders go (with --tools: "
                             "OUT/tools/teacher and OUT/tools/student)"),
    seed: int = typer.Option(0, help="seed of the data, initialisation and batch order"),
    tools: bool = typer.Option(False, "--tools", help="build the tool-calling models instead (lookup_order): the "
                               "committed teacher fine-tuned, then a student distilled from it"),
    teacher_steps: int | None = typer.Option(None, min=1, help="teacher training steps (batch 32, fresh tickets "
                                             "each); default 5000; with --tools 1500 of fine-tuning, batch 16"),
    student_steps: int | None = typer.Option(None, min=1, help="student training steps (batch 32); default 4000, "
                                             "with --tools 1200"),
    label_examples: int | None = typer.Option(None, min=10, help="training tickets the teacher answers for the "
                                              "student; default 30000, with --tools 10000 (one turn each)"),
    teacher: Path | None = typer.Option(None, exists=True, file_okay=False,
                                        help="reuse this teacher (with --tools: a tools teacher); only the student "
                                        "is trained"),
    cache: Path | None = typer.Option(None, file_okay=False, help="the teacher cache to reuse or resume (e.g. "
                                      "runs/teacher-cache); default: cache/teacher-cache beside the teacher (with "
                                      "--tools: OUT/cache/tools-teacher-cache)"),
    student_config: Path = typer.Option(CONFIGS_DIR / "demo_kd.yaml", exists=True, dir_okay=False,
                                        help="the trainer's config for the student; demo_sft.yaml: the hard-label "
                                        "baseline"),
    student_from_scratch: bool = typer.Option(False, help="--tools: a fresh seeded student instead of the "
                                              "committed student's weights"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
) -> None:
    """Train the demo tokenizer, teacher and student, and write their held-out evaluation.

    Example:  kdgate demo build --threads 2 --out runs/demo
    Example:  kdgate demo build --tools --threads 1 --out runs/tools-demo
    """
    if tools:
        _build_tools(out, seed, teacher_steps, student_steps, label_examples, teacher, cache, student_config,
                     student_from_scratch, threads)
        return
    from distill.demo.build import BuildSettings
    from distill.demo.build import build as run_build

    settings = BuildSettings(out=out, seed=seed, teacher_steps=teacher_steps or 5000,
                             student_steps=student_steps or 4000, label_examples=label_examples or 30_000,
                             teacher_dir=teacher, cache=cache, student_config=student_config, threads=threads)
    try:
        report = run_build(settings, log=typer.echo)
    except ValueError as error:  # a cache made with other settings, a checkpoint of another config
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    _print_table({name: report["test"][name] for name in ("teacher", "student")})
    written = [out / "student", out / "build_report.json"] if teacher else [out / "teacher", out / "student",
                                                                              out / "build_report.json"]
    typer.echo(f"wrote {', '.join(map(str, written))} in {report['build_seconds'] / 60:.1f} min")


def _build_tools(out, seed, teacher_steps, student_steps, label_examples, teacher, cache, student_config,
                 student_from_scratch, threads) -> None:
    from distill.demo.build_tools import ToolBuildSettings, build_tools

    given = {"teacher_steps": teacher_steps, "student_steps": student_steps, "label_examples": label_examples}
    settings = ToolBuildSettings(out=out, seed=seed, teacher_dir=teacher, cache=cache, student_config=student_config,
                                 student_from_scratch=student_from_scratch, threads=threads,
                                 **{key: value for key, value in given.items() if value is not None})
    try:
        report = build_tools(settings, log=typer.echo)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    _print_tool_table(report["test"])
    models = settings.models
    written = ([] if teacher else [models / "teacher"]) + [models / "student", models / "build_report.json"]
    typer.echo(f"wrote {', '.join(map(str, written))} in {report['build_seconds'] / 60:.1f} min")


@app.command()
def golden(
    out: Path = typer.Option(ARTIFACTS_DIR / "golden.jsonl", dir_okay=False, help="where the golden set goes"),
    examples: int = typer.Option(400, min=1, help="held-out tickets of the usual stream in it (and 100 about the "
                                 "drift scenario's launched products)"),
) -> None:
    """Write the demo's golden set: frozen held-out tickets with their ground truth and slice, the trainer's gate.

    Example:  kdgate demo golden --out distill/demo/artifacts/golden.jsonl
    """
    from distill.demo.golden import write_golden

    path = write_golden(out, examples)
    typer.echo(f"wrote {examples} + 100 launched-product golden tickets to {path}")


@app.command("prelaunch-prompts")
def prelaunch_prompts(
    out: Path = typer.Option(Path("runs/prelaunch-prompts.jsonl"), dir_okay=False, help="JSONL for `distill "
                             "generate --prompts`"),
    count: int = typer.Option(12000, min=1, help="training tickets that mention no launched product"),
    seed: int = typer.Option(0),
) -> None:
    """Write the drift scenario's pre-launch training prompts: no ticket mentions a launched product.

    Example:  kdgate demo prelaunch-prompts --count 12000 --out runs/prelaunch-prompts.jsonl
    """
    from distill.demo import drift
    from distill.demo.prompts import write_prelaunch_prompts

    write_prelaunch_prompts(out, count, seed)
    typer.echo(f"wrote {count} pre-launch prompts (none about {', '.join(drift.LAUNCHED)}) to {out}")


@app.command("prelaunch-student", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prelaunch_student(
    ctx: typer.Context,
    teacher: Path = typer.Option(DEMO_TEACHER_DIR, exists=True, file_okay=False, help="the teacher's model folder"),
    init: Path = typer.Option(DEMO_STUDENT_DIR, exists=True, file_okay=False, help="the student's start, with the "
                              "teacher's tokenizer (for SmolLM2: the depth-pruned student)"),
    out: Path = typer.Option(..., file_okay=False, help="the pre-launch student's model folder (replaced)"),
    prompts: int = typer.Option(12000, min=1, help="pre-launch training tickets the teacher answers"),
    steps: int = typer.Option(3000, min=1, help="the recipe's optimizer steps"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="re-initialise the init's weights (seeded), "
                                      "as the demo's pre-launch student was; without it training starts from them"),
    config: Path = typer.Option(CONFIGS_DIR / "demo_kd.yaml", exists=True, dir_okay=False, help="the recipe's "
                                "YAML; extra `key=value` arguments override it (e.g. optim.lr=3e-4 batch_size=8)"),
    work: Path | None = typer.Option(None, file_okay=False, help="the prompts, the teacher cache and the recipe's "
                                     "run, resumed by a rerun; default: OUT-work beside OUT"),
    seed: int = typer.Option(0, help="of the tickets, the teacher's answers and the recipe"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
) -> None:
    """Make the drift scenario's pre-launch student for any teacher, as the demo's was: the teacher's top-20 on
    pre-launch tickets (`prelaunch-prompts`, `distill generate`), then the KD recipe (`distill train`, demo_kd.yaml)
    from --init. `kdgate demo drift --teacher T --student OUT` then serves it.

    Example:  kdgate demo prelaunch-student --from-scratch --threads 2 --out runs/student-prelaunch
    Example:  kdgate demo prelaunch-student --teacher T --init S --out runs/pair/student-prelaunch optim.lr=3e-4
    """
    from distill.config import command_overrides
    from distill.demo.prelaunch import PrelaunchSettings, build_prelaunch_student

    check_model_folders(teacher=teacher, init=init)
    try:
        settings = PrelaunchSettings(teacher=teacher, init=init, out=out, prompts=prompts, steps=steps,
                                     from_scratch=from_scratch, config=config,
                                     overrides=tuple(command_overrides(ctx.args)), seed=seed, threads=threads,
                                     work=work)
        report = build_prelaunch_student(settings, log=typer.echo)
    except ValueError as error:  # a mistyped option, another tokenizer, a bad override, other settings' cache
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    kept = report["cache"]["kept"]
    last = report["training"][-1] if report["training"] else {}
    typer.echo(f"wrote the pre-launch student {out} ({kept} teacher answers, {steps} steps"
               + (f"; held-out agreement with the teacher {last['teacher_agreement']:.1%}" if last else "") + ")")


@app.command("eval")
def evaluate(
    model: list[Path] | None = typer.Option(None, exists=True, file_okay=False,
                                            help="model directories to evaluate (repeat the option); default: the "
                                            "committed teacher and student (with --tools: the tools ones)"),
    tools: bool = typer.Option(False, "--tools", help="tool conversations too: tool-call exact match and "
                               "well-formedness, the answer after the true tool result, and the plain answer"),
    examples: int = typer.Option(1000, min=1, help="held-out tickets"),
    split: str = typer.Option("test", help="test or val"),
    seed: int = typer.Option(0),
    json_out: Path | None = typer.Option(None, help="also write the results as JSON"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads; the demo models are so small that one is the "
                                "fastest, idle or busy (more threads mostly wait on each other)"),
) -> None:
    """Whole-answer exact match and per-field accuracy on the held-out split: the committed teacher and student,
    or the models named by --model (name each one, a model you trained too, e.g. runs/exp/sft/model).

    Example:  kdgate demo eval --examples 200 --threads 1
    Example:  kdgate demo eval --tools --examples 200 --threads 1
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.demo import task
    from distill.demo import tools as tool_task
    from distill.demo.evaluate import evaluate_model, evaluate_tool_model

    torch.set_num_threads(threads)
    model = model or ([TOOLS_TEACHER_DIR, TOOLS_STUDENT_DIR] if tools else [DEMO_TEACHER_DIR, DEMO_STUDENT_DIR])
    conversations = tool_task.take(split, examples, seed=seed) if tools else None
    tickets = task.take(split, examples, seed=seed) if not tools else None
    results = {}
    for directory in model:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        loaded = AutoModelForCausalLM.from_pretrained(str(directory))
        # A trainer run's model sits in RUN/model: name it after the run; the tools models after their folder too.
        name = directory.resolve().parent.name if directory.name == "model" else directory.name
        if tools:
            results[name] = evaluate_tool_model(loaded, tokenizer, conversations, progress=name)
        else:
            results[name] = evaluate_model(loaded, tokenizer, tickets, progress=name)
    (_print_tool_table if tools else _print_table)(results)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def _print_tool_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="demo task with tools, held-out split")
    for title in ("model", "n", "call exact", "call well-formed", "answer exact (after the tool)", "plain exact"):
        table.add_column(title, justify="left" if title == "model" else "right")
    shapes = sorted({shape for summary in results.values() for shape in summary["call"]["by_shape"]})
    for shape in shapes:
        table.add_column(f"call exact {shape.replace('_', ' ')}", justify="right")
    for name, summary in results.items():
        call = summary["call"]
        cells = [f"{value:.1%}" for value in (call["exact_match"], call["well_formed"],
                                               summary["answer"]["exact_match"], summary["plain"]["exact_match"])]
        cells += [f"{call['by_shape'][shape]['exact_match']:.1%}" if shape in call["by_shape"] else "-"
                  for shape in shapes]
        table.add_row(name, str(call["n"]), *cells)
    Console().print(table)


def _print_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="demo task, held-out split")
    columns = {"exact_match": "exact", "queue_accuracy": "queue", "priority_accuracy": "priority",
               "reply_accuracy": "reply", "valid_json": "json"}
    table.add_column("model")
    table.add_column("n", justify="right")
    for title in columns.values():
        table.add_column(title, justify="right")
    shapes = sorted({shape for summary in results.values() for shape in summary.get("by_shape", {})})
    for shape in shapes:
        table.add_column(f"exact {shape.replace('_', ' ')}", justify="right")
    for name, summary in results.items():
        cells = [f"{summary[column]:.1%}" for column in columns]
        cells += [f"{summary['by_shape'][shape]['exact_match']:.1%}" if shape in summary["by_shape"] else "-"
                  for shape in shapes]
        table.add_row(name, str(summary["n"]), *cells)
    Console().print(table)
