"""The `kdgate` command: one entry point, a sub-command per job. Heavy imports happen inside each command."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.cli import app as distill_app
from distill.demo.cli import app as demo_app
from gateway.shadow.cli import app as shadow_app
from kdgate.routing.cli import app as router_app
from loadtests.cli import app as loadtest_app

app = typer.Typer(help="kdgate: serve a distilled student and its teacher behind one OpenAI-compatible endpoint.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(demo_app, name="demo")
app.add_typer(router_app, name="router")
app.add_typer(shadow_app, name="shadow")
app.add_typer(distill_app, name="distill")
app.add_typer(loadtest_app, name="loadtest")


@app.command()
def serve(
    host: str | None = typer.Option(None, help="listen address (default: KDGATE_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, help="listen port (default: KDGATE_PORT or 8000)"),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="YAML settings file"),
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes (default: KDGATE_WORKERS or 1); "
                                       "more than 1 needs http backends"),
) -> None:
    """Run the gateway. With no configuration it serves the embedded demo student and teacher."""
    import os

    import uvicorn

    from gateway.app import create_app
    from gateway.settings import load_settings
    from gateway.workers import prepare_workers

    overrides = {key: value for key, value in {"host": host, "port": port, "workers": workers}.items()
                 if value is not None}
    settings = load_settings(config, **overrides)
    _configure_logging(settings.log_level)
    folder = None
    if settings.workers > 1:
        try:
            folder = prepare_workers(settings, settings.workers)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--workers") from None
    typer.echo(f"kdgate gateway on http://{settings.host}:{settings.port}/v1  (model `{settings.served_model}`; "
               f"student: {_describe(settings.student)}; teacher: {_describe(settings.teacher)}"
               f"{f'; {settings.workers} workers' if settings.workers > 1 else ''})")
    run = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
           "timeout_graceful_shutdown": 5}
    if folder is None:
        uvicorn.run(create_app(settings), **run)
        return
    typer.echo(f"metrics: prometheus-client multiprocess mode, files in {folder}")
    if config is not None:
        os.environ["KDGATE_CONFIG"] = str(config.resolve())  # the workers read the same file
    uvicorn.run("gateway.workers:app_from_environment", factory=True, workers=settings.workers, **run)


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
) -> None:
    """Serve one local engine as a standalone OpenAI-compatible server (no routing), like `vllm serve`."""
    import uvicorn

    from gateway.app import create_engine_app
    from gateway.backends.local import LocalBackend
    from gateway.chat.serving import ServingLimits
    from gateway.engine.engine import EngineSettings

    name = served_model_name or model.name
    settings = EngineSettings(model_dir=model, device=device, dtype=dtype, max_batch_size=max_batch_size,
                              threads=threads)
    limits = ServingLimits(max_tokens_limit=max_tokens_limit, default_max_tokens=min(256, max_tokens_limit),
                           max_top_logprobs=max_logprobs)
    _configure_logging("info")
    typer.echo(f"kdgate engine serving `{name}` from {model} on http://{host}:{port}/v1")
    app_ = create_engine_app(lambda: LocalBackend("engine", settings, model_name=name), name, limits)
    uvicorn.run(app_, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _describe(backend) -> str:
    if backend is None:
        return "none"
    return f"local {backend.model_dir}" if backend.kind == "local" else f"http {backend.base_url} ({backend.model})"


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    app()
