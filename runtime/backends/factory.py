"""The backend factory: backends by role from their settings, sharing one `httpx.AsyncClient`, closed together.

The gateway opens its student and teacher here; the trainer and the routing harness open theirs the same way, so a
backend is built in one place whoever uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

from runtime.backends.retry import RetryBudget
from runtime.contract import Backend, BackendInfo
from runtime.settings import BackendSettings, HttpClientSettings


@asynccontextmanager
async def open_backends(roles: dict[str, BackendSettings], http: HttpClientSettings | None = None,
                        retry_budget: float = 0.0, on_retry: Callable[[str], None] | None = None
                        ) -> AsyncIterator[dict[str, Backend]]:
    """The backends by role (`student`, `teacher`, …), closed on exit. `on_retry(role)` counts a resent request."""
    async with http_client(http or HttpClientSettings(), roles.values()) as client, AsyncExitStack() as opened:
        backends = {}
        for role, config in roles.items():
            count = (lambda role=role: on_retry(role)) if on_retry else (lambda: None)
            backends[role] = build_backend(role, config, client, retry_budget, count)
            opened.push_async_callback(backends[role].aclose)
        yield backends


def build_backend(name: str, config: BackendSettings, client: httpx.AsyncClient | None,
                  retry_budget: float = 0.0, on_retry: Callable[[], None] = lambda: None) -> Backend:
    if config.kind == "http":
        from runtime.backends.http import HttpBackend

        if client is None:
            raise ValueError(f"backend `{name}` is http, but no HTTP client was opened for it")
        api_key = config.api_key.get_secret_value() if config.api_key else None
        info = BackendInfo(name=name, model=config.model, kind="http")
        return HttpBackend(info, config.base_url, client, api_key=api_key, retry_budget=RetryBudget(retry_budget),
                           on_retry=on_retry)
    from runtime.backends.local import LocalBackend

    if not config.model_dir.is_dir():
        raise FileNotFoundError(f"{name} model directory {config.model_dir} does not exist; build the demo models "
                                "with `kdgate demo build` or point `model_dir` at a Hugging Face model directory")
    return LocalBackend(name, config.engine_settings(), model_name=config.model)


@asynccontextmanager
async def http_client(settings: HttpClientSettings, backends: Iterable[BackendSettings | None],
                      always: bool = False) -> AsyncIterator[httpx.AsyncClient | None]:
    """One client for every http backend; None when there is none (unless `always`: backends may come later)."""
    if not always and not any(config and config.kind == "http" for config in backends):
        yield None
        return
    timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                            write=settings.write_timeout_s, pool=settings.pool_timeout_s)
    limits = httpx.Limits(max_connections=settings.max_connections,
                          max_keepalive_connections=settings.max_keepalive_connections)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        yield client
