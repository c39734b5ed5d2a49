"""App factories: `create_app` (the gateway: student + teacher behind a routing policy) and `create_engine_app`
(one local engine as a standalone OpenAI-compatible server, the same chat code without routing).

The lifespan builds the shared `httpx.AsyncClient` and the backends, and closes them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gateway import admin, openapi, ops
from gateway.auth import AuthMiddleware, Credentials, load_credentials
from gateway.backends.base import Backend, BackendInfo
from gateway.backends.retry import RetryBudget
from gateway.banner import banner
from gateway.breaker import CircuitBreaker, HealthChecker
from gateway.chat import routes as chat_routes
from gateway.chat.serving import ChatServing, ServingLimits
from gateway.errors import GatewayError, to_envelope
from gateway.limits import Admission, AdmissionMiddleware
from gateway.logs import escape
from gateway.metrics import EngineCollector, GatewayMetrics
from gateway.routing import Router, SingleBackend, build_policy
from gateway.settings import BackendSettings, GatewaySettings, HttpClientSettings, LimitsSettings
from gateway.shadow.service import open_shadow
from gateway.workers import multiprocess_dir, reap_dead_workers, worker_exited
from router.handoff import HandoffRule

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    limits = ServingLimits(max_tokens_limit=settings.max_tokens_limit, default_max_tokens=settings.default_max_tokens,
                           max_top_logprobs=settings.max_top_logprobs)
    policy = build_policy(settings.routing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (worker_metrics(), open_backends(settings, app.state.metrics) as backends,
                    open_shadow(settings, backends, app.state.metrics) as shadow):
            handoff = settings.routing.handoff
            configs, resilience = settings.backends(), settings.resilience
            breakers = {role: CircuitBreaker(role, app.state.metrics, resilience.breaker_failures,
                                             resilience.breaker_open_s) for role in backends}
            router = Router(policy, backends, app.state.metrics,
                            handoff=HandoffRule(handoff.min_prob) if handoff.enabled else None,
                            deadlines={role: config.first_token_timeout_s for role, config in configs.items()},
                            caps={role: config.max_in_flight for role, config in configs.items()},
                            breakers=breakers)
            health = HealthChecker(backends, breakers, app.state.metrics, resilience.health_interval_s or 0)
            app.state.chat = ChatServing(served_model=settings.served_model, router=router, limits=limits,
                                         metrics=app.state.metrics, announce_route=True, shadow=shadow)
            _collect_engine_metrics(app, backends)
            if resilience.health_interval_s:
                health.start()
            try:
                yield
            finally:
                await health.aclose()
                await app.state.admission.aclose()

    credentials = load_credentials(settings)
    app = _app("kdgate gateway", lifespan, AppOptions.of(settings), credentials, admission=True)
    app.include_router(admin.router)
    app.state.banner = banner(settings)
    app.state.served = openapi.ServedLimits(settings.served_model, settings.max_tokens_limit, settings.max_top_logprobs)
    return app


def create_engine_app(backend_factory: Callable[[], Backend], served_model: str, limits: ServingLimits,
                      options: AppOptions | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = backend_factory()
        app.state.chat = ChatServing(served_model=served_model, router=SingleBackend(backend), limits=limits,
                                     metrics=app.state.metrics, announce_route=False)
        _collect_engine_metrics(app, {"engine": backend})
        try:
            yield
        finally:
            await backend.aclose()

    app = _app("kdgate engine", lifespan, options or AppOptions(), Credentials(required=False, keys=()))
    app.state.served = openapi.ServedLimits(served_model, limits.max_tokens_limit, limits.max_top_logprobs)
    return app


def _collect_engine_metrics(app: FastAPI, backends: dict[str, Backend]) -> None:
    engines = {name: backend.engine for name, backend in backends.items() if hasattr(backend, "engine")}
    if engines:
        app.state.metrics.registry.register(EngineCollector(engines))


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


@asynccontextmanager
async def open_backends(settings: GatewaySettings, metrics: GatewayMetrics | None = None
                        ) -> AsyncIterator[dict[str, Backend]]:
    """The configured backends by role (`student`, and `teacher` unless it is null), closed on exit."""
    roles = settings.backends()
    async with http_client(settings.http, roles.values()) as client, AsyncExitStack() as backends_open:
        backends = {}
        for name, config in roles.items():
            on_retry = (lambda role=name: metrics.retries.labels(role).inc()) if metrics else (lambda: None)
            backends[name] = build_backend(name, config, client, settings.resilience.retry_budget, on_retry)
            backends_open.push_async_callback(backends[name].aclose)
        yield backends


def build_backend(name: str, config: BackendSettings, client: httpx.AsyncClient | None,
                  retry_budget: float = 0.0, on_retry: Callable[[], None] = lambda: None) -> Backend:
    if config.kind == "http":
        from gateway.backends.http import HttpBackend

        api_key = config.api_key.get_secret_value() if config.api_key else None
        info = BackendInfo(name=name, model=config.model, kind="http")
        return HttpBackend(info, config.base_url, client, api_key=api_key, retry_budget=RetryBudget(retry_budget),
                           on_retry=on_retry)
    from gateway.backends.local import LocalBackend

    if not config.model_dir.is_dir():
        raise FileNotFoundError(f"{name} model directory {config.model_dir} does not exist; build the demo models "
                                "with `kdgate demo build` or point `model_dir` at a Hugging Face model directory")
    return LocalBackend(name, config.engine_settings(), model_name=config.model)


@asynccontextmanager
async def http_client(settings: HttpClientSettings, backends) -> AsyncIterator[httpx.AsyncClient | None]:
    if not any(config and config.kind == "http" for config in backends):
        yield None
        return
    timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                            write=settings.write_timeout_s, pool=settings.pool_timeout_s)
    limits = httpx.Limits(max_connections=settings.max_connections,
                          max_keepalive_connections=settings.max_keepalive_connections)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        yield client


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


def _app(title: str, lifespan, options: AppOptions, credentials: Credentials, admission: bool = False) -> FastAPI:
    docs = {} if options.docs_enabled else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title=title, lifespan=lifespan, **docs)
    app.state.metrics = GatewayMetrics()
    app.state.credentials = credentials
    app.state.auth_required = credentials.required
    app.state.admission = Admission(options.limits, app.state.metrics) if admission else None
    app.state.max_body_bytes = options.max_body_bytes
    app.state.body_read_timeout_s = options.body_read_timeout_s
    app.include_router(chat_routes.router)
    app.include_router(ops.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
    if admission:  # inside auth (added first), which names the key it limits
        app.add_middleware(AdmissionMiddleware, admission=app.state.admission)
    app.add_middleware(AuthMiddleware, credentials=credentials, metrics=app.state.metrics)
    if options.cors_allow_origins:  # added last, so outermost: a preflight (which carries no key) is answered here
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-kdgate-force"],
                           expose_headers=["x-kdgate-route", "x-kdgate-route-reason", "retry-after"])
    openapi.install(app)
    return app


async def _gateway_error(request: Request, error: GatewayError) -> JSONResponse:
    status, body = to_envelope(error)
    return JSONResponse(body, status_code=status, headers=error.headers())


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = {404: f"no route {escape(request.url.path)}; see /openapi.json for the API",
               405: f"method {request.method} is not allowed on {escape(request.url.path)}; use "
                    f"{(error.headers or {}).get('allow', 'another method')}"}.get(error.status_code, str(error.detail))
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": error.status_code}}, status_code=error.status_code, headers=error.headers)


async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
    """The client left while sending its request: nothing to answer, nothing wrong on our side."""
    log.debug("client disconnected before its request arrived whole (%s)", request.url.path)
    return Response(status_code=499)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"error": {"message": f"internal error ({type(error).__name__}); the gateway logged the "
                                   "details", "type": "internal_error", "param": None, "code": 500}},
                        status_code=500)
