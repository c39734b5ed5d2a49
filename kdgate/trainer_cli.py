"""`kdgate trainer`: the online re-distillation service, its job entrypoint, and a client for its jobs API."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kdgate.admin_call import admin_call
from runtime.redact import redact

app = typer.Typer(help="Online re-distillation: the trainer service (Alertmanager webhook, jobs) and its jobs.",
                  no_args_is_help=True)

CONFIG = typer.Option(None, "--config", exists=True, dir_okay=False, help="trainer settings YAML")
URL = typer.Option("http://127.0.0.1:8010", envvar="KDGATE_TRAINER_URL", help="the trainer service")
TOKEN = typer.Option(None, envvar="KDGATE_TRAINER_ADMIN_KEY", help="its admin token (none: an open local service)")


def _settings(config: Path | None, **overrides):
    from pydantic import ValidationError

    from distill.online.settings import load_trainer_settings

    try:
        return load_trainer_settings(config, **overrides)
    except (ValidationError, ValueError, FileNotFoundError) as error:
        typer.echo(f"kdgate trainer: invalid settings: {error}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: str | None = typer.Option(None, help="listen address (default: the settings')"),
    port: int | None = typer.Option(None, help="listen port (default: the settings', 8010)"),
    config: Path | None = CONFIG,
) -> None:
    """Serve the webhook and the jobs API; run queued jobs one at a time.

    Example:  kdgate trainer serve --port 8010 --config deploy/trainer.yaml
    """
    from distill.online.app import create_trainer_app
    from gateway.logs import configure_logging
    from runtime.connections import ConnectionLimits
    from runtime.connections import serve as serve_http

    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    settings = _settings(config, **overrides)
    configure_logging("info")
    typer.echo(f"kdgate trainer on http://{settings.host}:{settings.port}  (store {redact(settings.store_url)}; "
               f"gateway {settings.gateway.url}; alerts with {settings.selector} start jobs; "
               f"{'tokens required' if settings.tokens_required() else 'OPEN: no tokens'})")
    serve_http(create_trainer_app(settings, config), ConnectionLimits(), host=settings.host, port=settings.port,
               log_level="info", log_config=None, access_log=False)


@app.command("run-job")
def run_job_command(job_id: int = typer.Argument(..., help="the job's id"), config: Path | None = CONFIG) -> None:
    """Run one job to its end (what the service's runner and a Kubernetes TrainJob start).

    Example:  kdgate trainer run-job 7 --config deploy/trainer.yaml
    """
    import logging

    from distill.online.job import run_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = run_job(job_id, _settings(config))
    raise typer.Exit(0 if state in ("succeeded", "rejected", "skipped") else 1)


@app.command()
def jobs(url: str = URL, token: str | None = TOKEN, limit: int = typer.Option(20, min=1)) -> None:
    """The newest jobs: state, step, trigger, candidate, and each one's reason in full below them.

    Example:  kdgate trainer jobs --limit 5
    """
    from kdgate import tables

    rows, reasons = tables.table("id", "state", "step", "trigger", "candidate", "created UTC"), []
    for job in _call("GET", url, f"/v1/jobs?limit={limit}", token)["jobs"]:
        tables.add_row(rows, str(job["id"]), job["state"], job["step"] or "", job["trigger"], job["candidate"] or "",
                       job["created_at"][:19].replace("T", " "))
        if job["reason"]:
            reasons.append((f"job {job['id']}", job["reason"]))
    tables.show(rows, reasons)


@app.command()
def job(job_id: int = typer.Argument(...), url: str = URL, token: str | None = TOKEN) -> None:
    """One job in full: figures, gate checks, log tail.

    Example:  kdgate trainer job 7
    """
    typer.echo(json.dumps(_call("GET", url, f"/v1/jobs/{job_id}", token), indent=1))


@app.command()
def start(reason: str = typer.Option("started by hand"),
          no_promote: bool = typer.Option(False, "--no-promote", help="train and gate, but leave the new version "
                                          "registered, not promoted"),
          url: str = URL, token: str | None = TOKEN) -> None:
    """Queue a job by hand.

    Example:  kdgate trainer start --reason "weekly" --no-promote
    """
    made = _call("POST", url, "/v1/jobs", token, {"reason": reason, "promote": not no_promote})
    typer.echo(f"job {made['id']} queued")


@app.command()
def cancel(job_id: int = typer.Argument(...), url: str = URL, token: str | None = TOKEN) -> None:
    """Cancel a queued or running job (the active student keeps serving).

    Example:  kdgate trainer cancel 7
    """
    done = _call("POST", url, f"/v1/jobs/{job_id}/cancel", token)
    typer.echo(f"job {job_id}: {done['state']}")


def _call(method: str, url: str, path: str, token: str | None, body: dict | None = None) -> dict:
    return admin_call(method, url, path, token, body, service="the trainer",
                      start_hint="start it with `kdgate trainer serve`", timeout=60)
