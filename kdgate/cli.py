"""The `kdgate` command: one entry point, a sub-command per job. Heavy imports happen inside each command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from distill.cli import app as distill_app
from distill.demo.cli import app as demo_app
from gateway.shadow.cli import app as shadow_app
from kdgate.auth_cli import app as auth_app
from kdgate.config_cli import app as config_app
from kdgate.drift.cli import drift as drift_command
from kdgate.routing.cli import app as router_app
from kdgate.store_cli import app as store_app
from kdgate.student_cli import app as student_app
from kdgate.trainer_cli import app as trainer_app
from loadtests.cli import app as loadtest_app

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

app = typer.Typer(help="kdgate: serve a distilled student and its teacher behind one OpenAI-compatible endpoint.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
demo_app.command("drift")(drift_command)  # the loop needs the gateway and the trainer: it lives above both
app.add_typer(demo_app, name="demo")
app.add_typer(router_app, name="router")
app.add_typer(shadow_app, name="shadow")
app.add_typer(distill_app, name="distill")
app.add_typer(loadtest_app, name="loadtest")
app.add_typer(config_app, name="config")
app.add_typer(auth_app, name="auth")
app.add_typer(student_app, name="student")
app.add_typer(trainer_app, name="trainer")
app.add_typer(store_app, name="store")


def _every_command() -> str:
    """The epilog of `kdgate --help`: every command, sub-commands included, with its one-line summary wrapped (never
    cut) to the terminal's width, continuation lines under the summary's first."""
    import shutil
    import textwrap

    def leaves(command, path: str):
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                yield from leaves(sub, f"{path} {name}")
        else:
            yield path, command

    rows = list(leaves(typer.main.get_group(app), "kdgate"))
    width = max(len(path) for path, _ in rows)
    line = max(width + 24, shutil.get_terminal_size((80, 24)).columns - 2)  # rich pads the epilog by 1 on each side
    return "\b\nEvery command (each one's --help has an example):\n" + "\n".join(
        textwrap.fill(command.get_short_help_str(limit=10_000), line, initial_indent=f"  {path.ljust(width)}  ",
                      subsequent_indent=" " * (width + 4), break_long_words=False, break_on_hyphens=False)
        for path, command in rows)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="listen address (default: KDGATE_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, help="listen port (default: KDGATE_PORT or 8000)"),
    config: list[Path] | None = typer.Option(None, exists=True, dir_okay=False, help="YAML settings file; "
                                             "repeat it to serve several distilled pairs on one port, each file "
                                             "one pair (its served_model, backends, routing and store)"),
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes (default: KDGATE_WORKERS or 1); "
                                       "more than 1 needs http backends"),
    demo: str = typer.Option("plain", help="with no backends configured, which demo pair: `plain`, or `tools` (the "
                             "pair trained to look an order up with a tool call; docs/demo.md)"),
) -> None:
    """Run the gateway; with no configuration, the embedded demo student and teacher with teacher fallback on.

    Example:  kdgate serve --config deploy/kdgate-vllm.yaml --workers 4
    """
    import os

    from gateway.app import create_app
    from gateway.banner import banner
    from gateway.logs import configure_logging
    from gateway.preflight import start_problem
    from gateway.settings import load_settings
    from gateway.workers import prepare_workers
    from runtime.connections import serve as serve_http

    overrides = {key: value for key, value in {"host": host, "port": port, "workers": workers}.items()
                 if value is not None}
    if demo not in ("plain", "tools"):
        raise typer.BadParameter(f"{demo!r}: use `plain` or `tools`", param_hint="--demo")
    if demo == "tools":
        from gateway.settings import DEMO_TOOLS_BACKENDS
        overrides |= DEMO_TOOLS_BACKENDS
    if config and len(config) > 1:
        _serve_pairs(config, overrides)
    config = config[0] if config else None
    settings = settings_or_exit(lambda: load_settings(config, **overrides))
    configure_logging(settings.log_level, settings.log_format)
    folder = None
    if settings.workers > 1:
        try:
            folder = prepare_workers(settings, settings.workers)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--workers") from None
    problem = start_problem(settings)  # a busy port, a store of another deployment: before anything loads
    if problem:
        _exit_with(problem)
    try:
        lines = banner(settings)  # reads the routing policy file: a bad one stops here, before any model loads
    except ValueError as error:
        _exit_with(str(error))
    for line in lines:
        typer.echo(line)
    run = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "log_config": None,
           "access_log": False,  # gateway.access logs each call, with its key
           "timeout_graceful_shutdown": settings.drain_timeout_s}  # in-flight streams finish, up to the deadline
    limits = settings.limits.connections()
    if folder is None:
        serve_http(create_app(settings), limits, **run)
        _exit_now()
    typer.echo(f"metrics: prometheus-client multiprocess mode, files in {folder}")
    if config is not None:
        os.environ["KDGATE_CONFIG"] = str(config.resolve())  # the workers read the same file
    serve_http("gateway.app:app_from_environment", limits, factory=True, workers=settings.workers, **run)
    _exit_now()


def _serve_pairs(configs: list[Path], overrides: dict) -> NoReturn:
    """Several pairs on one port (gateway.pairs): each file one whole gateway; the address, limits and logging are
    the first file's. One process: each pair loads its own models."""
    from gateway.app import create_app
    from gateway.banner import banner
    from gateway.logs import configure_logging
    from gateway.pairs import Pairs, check_pairs
    from gateway.preflight import start_problem
    from gateway.settings import load_settings
    from runtime.connections import serve as serve_http

    if overrides.get("workers", 1) > 1:
        raise typer.BadParameter("several pairs run in one process; drop --workers", param_hint="--workers")
    pairs = [settings_or_exit(lambda path=path: load_settings(path, **overrides)) for path in configs]
    try:
        check_pairs(pairs)
    except ValueError as error:
        _exit_with(str(error))
    first = pairs[0]
    configure_logging(first.log_level, first.log_format)
    for settings in pairs:
        problem = start_problem(settings)
        if problem:
            _exit_with(problem)
    for path, settings in zip(configs, pairs, strict=True):
        typer.echo(f"pair `{settings.served_model}` ({path}):")
        try:
            lines = banner(settings)
        except ValueError as error:
            _exit_with(str(error))
        for line in lines:
            typer.echo(f"  {line}")
    app = Pairs({settings.served_model: create_app(settings) for settings in pairs}, first.max_body_bytes)
    serve_http(app, first.limits.connections(), host=first.host, port=first.port, log_level=first.log_level,
               log_config=None, access_log=False, timeout_graceful_shutdown=first.drain_timeout_s)
    _exit_now()


def _exit_now() -> NoReturn:
    """After a clean shutdown (the lifespan closed the backends, the store and the shadow worker), exit without the
    interpreter's final garbage collection of the models' objects: on a busy 2-core machine it held Ctrl-C for 5-7 s
    after "Finished server process", in silence. A failed start never gets here (uvicorn exits 3 itself)."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def engine(
    model: Path = typer.Option(..., exists=True, file_okay=False, help="Hugging Face model directory"),
    host: str = typer.Option("127.0.0.1", help="listen address"),
    port: int = typer.Option(8001, help="listen port"),
    served_model_name: str | None = typer.Option(None, help="model id clients send (default: the directory name)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16, float16"),
    max_batch_size: int = typer.Option(32, min=1, help="sequences decoded together"),
    max_tokens_limit: int = typer.Option(4096, min=1),
    max_logprobs: int = typer.Option(20, min=0, help="largest top_logprobs / prompt_logprobs (vLLM's --max-logprobs)"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
    enable_lora: bool = typer.Option(False, help="serve peft LoRA adapters loaded at runtime (vLLM's "
                                     "/v1/load_lora_adapter; also needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)"),
) -> None:
    """Serve one local engine as a standalone OpenAI-compatible server (no routing), like `vllm serve`.

    Example:  kdgate engine --model distill/demo/artifacts/teacher --port 8002 --served-model-name teacher
    """
    from gateway.app import create_engine_app
    from gateway.logs import configure_logging
    from gateway.serving import ServingLimits
    from runtime.backends.local import LocalBackend
    from runtime.connections import ConnectionLimits
    from runtime.connections import serve as serve_http
    from runtime.engine.engine import EngineSettings
    from runtime.settings import model_dir_problem

    problem = model_dir_problem(model)
    if problem:
        raise typer.BadParameter(problem, param_hint="--model")
    name = served_model_name or model.name
    settings = EngineSettings(model_dir=model, device=device, dtype=dtype, max_batch_size=max_batch_size,
                              threads=threads)
    limits = ServingLimits(max_tokens_limit=max_tokens_limit, default_max_tokens=min(256, max_tokens_limit),
                           max_top_logprobs=max_logprobs)
    configure_logging("info")
    typer.echo(f"kdgate engine serving `{name}` from {model} on http://{host}:{port}/v1")
    from gateway.engine_lora import runtime_lora_allowed

    lora = enable_lora and runtime_lora_allowed()
    if enable_lora and not lora:
        typer.echo("--enable-lora: runtime adapter loading stays off until VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 is set "
                   "(as in vLLM)", err=True)
    app_ = create_engine_app(lambda: LocalBackend("engine", settings, model_name=name), name, limits,
                             lora_base=settings if lora else None)
    serve_http(app_, ConnectionLimits(), host=host, port=port, log_level="info", log_config=None,
               timeout_graceful_shutdown=5)


def settings_or_exit(load: Callable[[], GatewaySettings]) -> GatewaySettings:
    """The settings, or exit 2 with every invalid key named beside its environment variable."""
    from pydantic import ValidationError

    try:
        return load()
    except ValidationError as error:
        lines = [f"  {_setting_name(item['loc'])}: {_reason(item)}" for item in error.errors()]
        _exit_with("invalid settings:\n" + "\n".join(lines) + "\nsee docs/configuration.md for every key")
    except (FileNotFoundError, ValueError) as error:
        _exit_with(str(error))


def _reason(item: dict) -> str:
    reason = item["msg"].removeprefix("Value error, ")
    given = item.get("input")
    return f"{reason} (got {given!r})" if isinstance(given, str | int | float) else reason


def _setting_name(location: tuple) -> str:
    key = ".".join(str(part) for part in location if not isinstance(part, int))
    if not key:
        return "settings"
    return f"`{key}` (KDGATE_{key.upper().replace('.', '__')})"


def _exit_with(message: str) -> NoReturn:
    typer.echo(f"kdgate: {message}", err=True)
    raise typer.Exit(2)


def main() -> None:
    """The `kdgate` entry point: the epilog is built once the commands exist. A fatal signal (SIGBUS from a SQLite
    `-shm` mapping that became unwritable, SIGSEGV) prints every thread's traceback before the process dies,
    instead of nothing (faulthandler)."""
    import faulthandler

    faulthandler.enable()
    app.info.epilog = _every_command()
    app()


if __name__ == "__main__":
    main()
