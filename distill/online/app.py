"""`kdgate trainer serve`: the online re-distillation service.

    POST /v1/alerts                Alertmanager's webhook (its bearer token): firing alerts with the selector's
                                   labels queue a job (not one about a student version no longer active);
                                   answered at once, the work happens after
    POST /v1/jobs                  a job by hand, with options            (the admin token, as every route below)
    GET  /v1/jobs, /v1/jobs/{id}   state, step, progress, figures, the tail of the log
    POST /v1/jobs/{id}/cancel
    GET  /metrics                  jobs by state, durations, gate decisions, versions, the active student
    GET  /healthz

Jobs live in the record store (`train_jobs`), so a restarted service finds them: a job it left running is failed
(`trainer restarted`) or queued again. One runs at a time; the others wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from distill.online.alerts import WebhookPayload, alert_key, job_options, selected
from distill.online.metrics import StoreCollector
from distill.online.runner import LocalRunner, stop_orphan
from distill.online.schedule import Scheduler
from distill.online.settings import TrainerSettings
from runtime.connections import BodyLimit
from runtime.credentials import bearer, identify
from runtime.errors import envelope
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersions

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz"})


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="started by hand", max_length=500)
    dataset: dict = Field(default_factory=dict, description="overrides of `dataset` settings for this job")
    train_overrides: list[str] = Field(default_factory=list, description="`key=value` overrides of the recipe")
    canary_fraction: float | None = Field(default=None, gt=0, lt=1)
    promote: bool = Field(default=True, description="false: train, evaluate and gate, but promote nothing")


def create_trainer_app(settings: TrainerSettings, config_file: Path | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await asyncio.to_thread(ShadowStore, settings.store_url)
        jobs = TrainJobs(store)
        kept: tuple[int, ...] = ()
        if settings.runner == "kubernetes":
            from distill.online.kubernetes import KubernetesRunner

            runner = KubernetesRunner(settings, jobs)
            kept = tuple(await asyncio.to_thread(runner.adopt))  # TrainJobs outlive the trainer pod
        else:
            runner = LocalRunner(settings, jobs, config_file)
            for job in await asyncio.to_thread(jobs.list, 1000):
                if job.state == "running":
                    stop_orphan(job.runner_ref)
        left = await asyncio.to_thread(jobs.orphans, settings.requeue_on_restart, kept)
        if left:
            log.warning("jobs %s were left running by a trainer that stopped: %s", left,
                        "queued again" if settings.requeue_on_restart else "failed (`trainer restarted`)")
        scheduler = Scheduler(settings, store, jobs)
        app.state.jobs, app.state.runner, app.state.versions = jobs, runner, StudentVersions(store)
        app.state.registry.register(StoreCollector(store, jobs))
        task = asyncio.create_task(_loop(settings, runner, scheduler, store), name="kdgate-trainer")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.aclose()
            store.close()

    app = FastAPI(title="kdgate trainer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.registry = CollectorRegistry()
    tokens = []
    if settings.auth.alerts_sha256:
        tokens.append((bytes.fromhex(settings.auth.alerts_sha256), "alerts"))
    if settings.auth.admin_sha256:
        tokens.append((bytes.fromhex(settings.auth.admin_sha256), "admin"))
    app.state.tokens, app.state.tokens_required = tuple(tokens), settings.tokens_required()
    app.middleware("http")(_authorize)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: before anything reads the body
    app.add_exception_handler(RequestValidationError, _invalid)
    _routes(app)
    return app


async def _loop(settings: TrainerSettings, runner: LocalRunner, scheduler: Scheduler, store: ShadowStore) -> None:
    while True:
        try:
            moved = await asyncio.to_thread(store.keep_file)  # a deleted SQLite file is put back, as the gateway does
            if moved:
                log.error("the record store file was %s; the trainer reads and writes the restored file", moved)
            await scheduler.tick()
            await runner.tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # the store down for a moment: the next tick tries again; the service stays up
            log.exception("trainer loop")
        await asyncio.sleep(settings.poll_interval_s)


async def _authorize(request: Request, call_next):
    state = request.app.state
    path = request.url.path
    if path in OPEN_PATHS or not state.tokens_required:
        return await call_next(request)
    who = identify(bearer(request.scope["headers"]), state.tokens)
    if who is None:
        return _error(401, "no valid token: send `Authorization: Bearer <token>` (Alertmanager: "
                           "`http_config.authorization.credentials`)", headers={"WWW-Authenticate": "Bearer"})
    if who != "admin" and path != "/v1/alerts":
        return _error(403, f"the `{who}` token may only deliver alerts to /v1/alerts")
    return await call_next(request)


def _error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(envelope(message, kind, param), status_code=status, headers=headers)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid body"}
    field = ".".join(str(part) for part in first["loc"] if part != "body") or None
    return _error(400, f"`{field}`: {first['msg']}" if field else first["msg"], param=field)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/alerts")
    async def alerts(request: Request, payload: WebhookPayload) -> dict:
        """Queue one job per new firing alert that matches; a retried delivery finds its job; while an alert's job
        is queued or running, further alerts join it instead of queueing another."""
        settings, jobs = request.app.state.settings, request.app.state.jobs
        made, known = [], []
        for alert in selected(payload, settings.selector):
            replaced = await asyncio.to_thread(replaced_version, request.app.state.versions, alert)
            if replaced is not None:
                log.info("alert %s is about student version %s, which is no longer active: no job",
                         alert.labels.get("alertname"), replaced)
                continue
            cooling = await asyncio.to_thread(cooling_version, request.app.state.versions, alert,
                                              settings.promotion_cooldown_s)
            if cooling is not None:
                log.info("alert %s is about student version %s, active for less than promotion_cooldown_s "
                         "(%.0f s): no job", alert.labels.get("alertname"), cooling, settings.promotion_cooldown_s)
                continue
            job, created = await asyncio.to_thread(_job_for_alert, jobs, payload, alert)
            (made if created else known).append(job.id)
        for alert in selected(payload, settings.selector, status="resolved"):  # a late firing must not start one
            await asyncio.to_thread(jobs.close_before_start, "alert", job_options(payload, alert),
                                    alert_key(payload, alert), "the alert was resolved before a firing was seen")
        ignored = len(payload.alerts) - len(made) - len(known)
        if made:
            log.info("alert(s) from %s queued job(s) %s", payload.receiver, made)
        return {"queued": made, "already": known, "ignored": ignored}

    @app.post("/v1/jobs", status_code=201)
    async def create_job(request: Request, body: JobRequest | None = None) -> dict:
        body = body or JobRequest()
        job, _ = await asyncio.to_thread(request.app.state.jobs.create, "manual", body.model_dump())
        return job.public()

    @app.get("/v1/jobs")
    async def list_jobs(request: Request, limit: int = 50) -> dict:
        jobs = await asyncio.to_thread(request.app.state.jobs.list, max(1, min(limit, 1000)))
        return {"jobs": [job.public() for job in jobs]}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(request: Request, job_id: int):
        job = await asyncio.to_thread(request.app.state.jobs.get, job_id)
        if job is None:
            return _error(404, f"no job {job_id}; GET /v1/jobs lists them", param="job_id")
        return job.public()

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: int):
        job = await asyncio.to_thread(request.app.state.jobs.get, job_id)
        if job is None:
            return _error(404, f"no job {job_id}; GET /v1/jobs lists them", param="job_id")
        if job.finished:
            return _error(409, f"job {job_id} has ended already ({job.state})")
        if job.step == "promote":  # one compare-and-swap at the gateway: let it land, then roll back if need be
            return _error(409, f"job {job_id} is promoting its student; wait for it, then `kdgate student rollback`")
        await request.app.state.runner.cancel(job_id)
        return (await asyncio.to_thread(request.app.state.jobs.get, job_id)).public()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, request.app.state.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def replaced_version(versions: StudentVersions, alert) -> str | None:
    """The student version an alert names (`student_version`, as the drift alert carries it) when that version is
    not the active one: its drift episode ended with its replacement (or it is a canary, which the gateway judges),
    so an alert still firing about it, or firing late, starts nothing. None for an alert about the active version
    or about no version."""
    named = alert.labels.get("student_version")
    if named is None:
        return None
    active = versions.slot().active
    return named if active is not None and named != active else None


def _job_for_alert(jobs: TrainJobs, payload: WebhookPayload, alert):
    pending = jobs.active()
    if pending is not None and pending.trigger == "alert":
        return pending, False  # one re-distillation at a time answers every alert
    return jobs.create("alert", job_options(payload, alert), key=alert_key(payload, alert))


def cooling_version(versions: StudentVersions, alert, cooldown_s: float) -> str | None:
    """The active version an alert is about when it replaced another less than `cooldown_s` ago: the drift episode
    whose job promoted it is not over yet. None otherwise. An alert that names no version (the teacher-share alert)
    is about the version serving now."""
    active = versions.slot().active
    named = alert.labels.get("student_version") or active
    if named is None or cooldown_s <= 0 or active != named:
        return None
    version = versions.get(named)
    since = version.changed_at
    if since is None or version.previous is None:  # the first version was seeded, not promoted by an episode's job
        return None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return named if (datetime.now(UTC) - since).total_seconds() < cooldown_s else None
