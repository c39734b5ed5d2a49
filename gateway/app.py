"""App factories: `create_app` (the gateway: student + teacher behind a routing policy) and `create_engine_app`
(one local engine as a standalone OpenAI-compatible server, the same chat and completions code without routing).

The lifespan builds the shared `httpx.AsyncClient` and the backends, and closes them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gateway import admin, openapi, ops
from gateway.auth import AuthMiddleware, Credentials, load_credentials
from gateway.banner import banner
from gateway.breaker import CircuitBreaker, HealthChecker
from gateway.chat import routes as chat_routes
from gateway.chat.serving import ChatServing
from gateway.completions import routes as completions_routes
from gateway.completions.serving import CompletionServing
from gateway.cost import CostMeter
from gateway.limits import Admission, AdmissionMiddleware
from gateway.logs import escape
from gateway.metrics import EngineCollector, GatewayMetrics
from gateway.responses import routes as responses_routes
from gateway.responses.serving import ResponseServing
from gateway.routing import Router, SingleBackend, build_policy
from gateway.serving import ServingLimits
from gateway.settings import GatewaySettings, LimitsSettings
from gateway.shadow.service import open_shadow
from gateway.students import routes as student_routes
from gateway.students.service import LiveRoles, open_students
from gateway.workers import multiprocess_dir, reap_dead_workers, worker_exited
from router.handoff import HandoffRule
from runtime.backends.factory import open_backends
from runtime.contract import Backend
from runtime.errors import GatewayError, envelope, to_envelope

if TYPE_CHECKING:
    from runtime.engine.engine import EngineSettings  # imports torch: only the engine server passes one

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    limits = ServingLimits(max_tokens_limit=settings.max_tokens_limit, default_max_tokens=settings.default_max_tokens,
                           max_top_logprobs=settings.max_top_logprobs)
    policy = build_policy(settings.routing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = app.state.metrics
        others = {role: config for role, config in settings.backends().items() if role != "student"}
        async with (worker_metrics(), open_backends(others, settings.http, settings.resilience.retry_budget,
                                                    lambda role: metrics.retries.labels(role).inc()) as fixed,
                    open_students(settings, metrics) as students,
                    open_shadow(settings, fixed, metrics) as shadow):
            backends = LiveRoles(fixed, students, "backend")
            handoff = settings.routing.handoff
            configs, resilience = settings.backends(), settings.resilience
            breakers = LiveRoles({role: CircuitBreaker(role, metrics, resilience.breaker_failures,
                                                       resilience.breaker_open_s) for role in fixed},
                                 students, "breaker")
            router = Router(policy, backends, metrics,
                            handoff=HandoffRule(handoff.min_prob) if handoff.enabled else None,
                            deadlines={role: config.first_token_timeout_s for role, config in configs.items()},
                            stalls={role: config.stall_timeout_s for role, config in configs.items()},
                            caps={role: config.max_in_flight for role, config in configs.items()},
                            breakers=breakers,
                            teacher_target=handoff.target_teacher_fraction if handoff.enabled else None)
            students.on_switch.append(router.share.restart)
            cost = CostMeter.of(configs, metrics)
            if shadow is not None:
                shadow.on_divergence = students.record_divergence
                shadow.student_of = students.held
                shadow.cost = cost
            health = HealthChecker(backends, breakers, metrics, resilience.health_interval_s or 0)
            app.state.chat = ChatServing(served_model=settings.served_model, router=router, limits=limits,
                                         metrics=metrics, announce_route=True, shadow=shadow, students=students,
                                         cost=cost)
            app.state.completions = CompletionServing.beside(app.state.chat)
            app.state.responses = ResponseServing.beside(app.state.chat)
            app.state.students = students
            _collect_engine_metrics(app, backends)
            if resilience.health_interval_s:
                health.start()
            try:
                yield
            finally:
                await health.aclose()
                await app.state.admission.aclose()

    credentials = load_credentials(settings)
    app = _app("kdgate gateway", lifespan, AppOptions.of(settings), credentials, admits=settings.served_model)
    app.include_router(admin.router)
    app.include_router(student_routes.router)
    app.state.banner = banner(settings)
    app.state.served = openapi.ServedLimits(settings.served_model, settings.max_tokens_limit, settings.max_top_logprobs)
    return app


def create_engine_app(backend_factory: Callable[[], Backend], served_model: str, limits: ServingLimits,
                      options: AppOptions | None = None, lora_base: EngineSettings | None = None) -> FastAPI:
    """`lora_base`: serve vLLM's runtime LoRA endpoints, adapters going over these engine settings."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = backend_factory()
        router = SingleBackend(backend)
        app.state.chat = ChatServing(served_model=served_model, router=router, limits=limits,
                                     metrics=app.state.metrics, announce_route=False)
        app.state.completions = CompletionServing.beside(app.state.chat)
        app.state.responses = ResponseServing.beside(app.state.chat)
        _collect_engine_metrics(app, {"engine": backend})
        try:
            yield
        finally:
            for adapter in list(router.adapters.values()):
                await adapter.aclose()
            await backend.aclose()

    app = _app("kdgate engine", lifespan, options or AppOptions(), Credentials(required=False, keys=()))
    if lora_base is not None:
        from gateway import engine_lora

        app.state.lora_base = lora_base
        app.include_router(engine_lora.router)
    app.state.served = openapi.ServedLimits(served_model, limits.max_tokens_limit, limits.max_top_logprobs)
    return app


def _collect_engine_metrics(app: FastAPI, backends: Mapping[str, Backend]) -> None:
    """Local engines' batch state at scrape time, of the backends serving then (a student version may change)."""
    if any(hasattr(backend, "engine") for backend in backends.values()):
        app.state.metrics.registry.register(EngineCollector(
            lambda: {name: backend.engine for name, backend in backends.items() if hasattr(backend, "engine")}))


@asynccontextmanager
async def worker_metrics() -> AsyncIterator[None]:
    """One of several workers (multiprocess metrics): forget dead workers' live gauges, and this one's on exit."""
    folder = multiprocess_dir()
    if folder is None:
        yield
        return
    reap_dead_workers(folder)
    try:
        yield
    finally:
        worker_exited(folder)


@dataclass(frozen=True)
class AppOptions:
    """How the HTTP side behaves, for the gateway and the engine server alike."""

    max_body_bytes: int = 1_048_576
    body_read_timeout_s: float = 30.0
    docs_enabled: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    limits: LimitsSettings = field(default_factory=LimitsSettings)

    @classmethod
    def of(cls, settings: GatewaySettings) -> AppOptions:
        return cls(settings.max_body_bytes, settings.body_read_timeout_s, settings.docs_enabled,
                   tuple(settings.cors_allow_origins), settings.limits)


def _app(title: str, lifespan, options: AppOptions, credentials: Credentials, admits: str | None = None) -> FastAPI:
    """The HTTP side of a gateway or an engine server; `admits`: the served model whose requests the app admits
    under its keys' rate limits (a pair's own windows), None to admit everything (the engine server)."""
    docs = {} if options.docs_enabled else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title=title, lifespan=lifespan, **docs)
    app.state.metrics = GatewayMetrics()
    app.state.credentials = credentials
    app.state.auth_required = credentials.required
    app.state.admission = Admission(options.limits, app.state.metrics, admits) if admits is not None else None
    app.state.max_body_bytes = options.max_body_bytes
    app.state.body_read_timeout_s = options.body_read_timeout_s
    app.include_router(chat_routes.router)
    app.include_router(completions_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(ops.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
    if admits is not None:  # inside auth (added first), which names the key it limits
        app.add_middleware(AdmissionMiddleware, admission=app.state.admission)
    app.add_middleware(AuthMiddleware, credentials=credentials, metrics=app.state.metrics)
    if options.cors_allow_origins:  # added last, so outermost: a preflight (which carries no key) is answered here
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-kdgate-force"],
                           expose_headers=["x-kdgate-route", "x-kdgate-route-reason", "x-kdgate-student-version",
                                           "retry-after"])
    openapi.install(app)
    return app


async def _gateway_error(request: Request, error: GatewayError) -> JSONResponse:
    status, body = to_envelope(error)
    return JSONResponse(body, status_code=status, headers=error.headers())


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = {404: f"no route {escape(request.url.path)}; see /openapi.json for the API",
               405: f"method {request.method} is not allowed on {escape(request.url.path)}; use "
                    f"{(error.headers or {}).get('allow', 'another method')}"}.get(error.status_code, str(error.detail))
    return JSONResponse(envelope(message, "invalid_request_error"), status_code=error.status_code,
                        headers=error.headers)


async def _invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    """An admin body that does not validate: 400 in OpenAI's envelope, naming the first field and what is wrong."""
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid body"}
    field = ".".join(str(part) for part in first["loc"] if part != "body") or None
    message = first["msg"].removeprefix("Value error, ")
    return JSONResponse(envelope(f"`{field}`: {message}" if field else message, "invalid_request_error", field),
                        status_code=400)


async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
    """The client left while sending its request: nothing to answer, nothing wrong on our side."""
    log.debug("client disconnected before its request arrived whole (%s)", request.url.path)
    return Response(status_code=499)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse(envelope(f"internal error ({type(error).__name__}); the gateway logged the details",
                                 "internal_error"), status_code=500)


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker: the settings from the environment and `KDGATE_CONFIG`, as the parent's."""
    from gateway.logs import configure_logging
    from gateway.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)  # a spawned worker starts with no logging set up
    return create_app(settings)
