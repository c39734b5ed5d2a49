"""Several distilled pairs behind one gateway: each pair is a whole gateway of its own settings file (its
`served_model`, student and teacher, routing policy, shadow store and so student versions and trainer jobs), and
one ASGI app in front sends each request to the pair its `model` names.

`kdgate serve --config support.yaml --config billing.yaml` serves both on one port. What goes where:

| request | goes to |
|---|---|
| `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses` | the pair whose `served_model` the body's `model` names (`<model>@<version>` too); an unknown or missing `model` is a 404 / 400 naming the models there are |
| `GET /v1/models` | every pair's list, merged; `GET /v1/models/{id}` the pair that serves it |
| `/admin/...`, `GET /readyz/adapters` | the pair named by the `x-kdgate-model` header (needed with more than one pair) |
| `GET /metrics` | every pair's series, each labelled `served_model` |
| `/healthz`, `/health`, `/readyz` | every pair: ready only when all are |

Each pair keeps its own authentication (give them the same keys files), limits and shadow worker. Pairs must not
share a record store: a store holds one pair's student versions and jobs (one trainer per store).
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from gateway.settings import GatewaySettings
from runtime.connections import BodyTooLarge, read_body, refuse_too_large, replaying
from runtime.errors import envelope

GENERATION = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
PAIR_HEADER = b"x-kdgate-model"
ADAPTERS = "/readyz/adapters"
LABEL = "served_model"


def check_pairs(pairs: list[GatewaySettings]) -> None:
    """Refused before anything loads: two pairs under one model name, or sharing a record store."""
    names = [settings.served_model for settings in pairs]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"two settings files serve `{twice}`: each pair needs its own `served_model`")
    stores = [settings.shadow.store_url for settings in pairs if settings.shadow.store_url]
    if len(set(stores)) != len(stores):
        raise ValueError("two pairs share a record store (`shadow.store_url`): a store holds one pair's student "
                         "versions and jobs; give each pair its own")


class Pairs:
    """The ASGI app in front of one app per pair (`gateway.app.create_app` of each settings file)."""

    def __init__(self, apps: dict[str, Any], max_body_bytes: int):
        self.apps = apps  # served_model -> app
        self.first = next(iter(apps.values()))
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return await self.first(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in GENERATION:
            return await self._generation(scope, receive, send)
        if path == "/metrics":
            return await self._metrics(scope, receive, send)
        if path == "/v1/models" or path in ("/healthz", "/health", "/readyz"):
            return await self._merged(scope, receive, send)
        if path.startswith("/v1/models/"):
            return await self._to(self._owner(path.removeprefix("/v1/models/")), scope, receive, send)
        if path.startswith("/admin/") or path == ADAPTERS:  # a LoRA student's readiness asks for its own pair's
            return await self._admin(scope, receive, send)
        return await self.first(scope, receive, send)

    # --- one pair --------------------------------------------------------------------------------------------------

    def _owner(self, model: str | None) -> str | None:
        if model is None:
            return None
        name = model.split("@", 1)[0]
        return name if name in self.apps else None

    async def _to(self, name: str | None, scope, receive, send) -> None:
        if name is None:
            return await _json(send, 404, envelope(f"no such model here; this gateway serves {self._listing()} "
                                                   "(GET /v1/models)", "invalid_request_error", "model",
                                                   "model_not_found"))
        return await self.apps[name](scope, receive, send)

    async def _generation(self, scope, receive, send) -> None:
        try:  # the pair is chosen by the body's `model`: read it (the pair's own limit still applies after)
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            return await refuse_too_large(send, self.max_body_bytes)
        if body is None:
            return None  # the client left
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):  # not a JSON object: any pair refuses it as a request of its own
            return await self._replay(self.first, body, scope, receive, send)
        if not isinstance(model, str):
            return await _json(send, 400, envelope(f"`model` is required with several pairs behind this gateway: "
                                                   f"name one of {self._listing()}", "invalid_request_error",
                                                   "model", None))
        name = self._owner(model)
        if name is None:
            return await self._to(None, scope, receive, send)
        return await self._replay(self.apps[name], body, scope, receive, send)

    async def _replay(self, app, body: bytes, scope, receive, send) -> None:
        return await app(scope, replaying(body, receive), send)

    async def _admin(self, scope, receive, send) -> None:
        named = dict(scope["headers"]).get(PAIR_HEADER)
        if named is None and len(self.apps) == 1:
            return await self.first(scope, receive, send)
        if named is None:
            return await _json(send, 400, envelope(f"several pairs are behind this gateway: name one with the "
                                                   f"`x-kdgate-model` header ({self._listing()})",
                                                   "invalid_request_error", "x-kdgate-model", None))
        return await self._to(self._owner(named.decode("latin-1")), scope, receive, send)

    # --- every pair ------------------------------------------------------------------------------------------------

    async def _merged(self, scope, receive, send) -> None:
        """`/v1/models` merged; health and readiness: the worst status of all, each pair's body under its name."""
        answers = {name: await _call(app, scope) for name, app in self.apps.items()}
        statuses = [status for status, _, _ in answers.values()]
        if scope["path"] == "/v1/models":
            if any(status != 200 for status in statuses):  # a refusal (no key, a bad key): the first one's
                status, headers, body = next(answer for answer in answers.values() if answer[0] != 200)
                return await _raw(send, status, headers, body)
            data = [card for _, _, body in answers.values() for card in json.loads(body)["data"]]
            return await _json(send, 200, {"object": "list", "data": data})
        merged = {name: json.loads(body) for name, (_, _, body) in answers.items()}
        return await _json(send, max(statuses), {"status": "ready" if max(statuses) == 200 else "unready",
                                                 "pairs": merged})

    async def _metrics(self, scope, receive, send) -> None:
        """Every pair's series under one name each, labelled with its pair (a refusal: the first pair's answer)."""
        status, headers, body = await _call(self.first, scope)
        if status != 200:  # the metrics token is checked by the pairs' own auth
            return await _raw(send, status, headers, body)
        text = generate_latest(_Labelled({name: app.state.metrics.registry for name, app in self.apps.items()}))
        return await _raw(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], text)

    def _listing(self) -> str:
        return ", ".join(f"`{name}`" for name in self.apps)

    async def _lifespan(self, receive, send) -> None:
        message = await receive()
        async with AsyncExitStack() as stack:
            try:
                for app in self.apps.values():
                    await stack.enter_async_context(_lifespan_of(app))
            except BaseException as error:  # noqa: BLE001  (any pair failing to start fails the server)
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                raise
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def _lifespan_of(app):
    async with app.router.lifespan_context(app):
        yield


class _Labelled:
    """A collector over several registries: each family once, each sample labelled with its registry's pair."""

    def __init__(self, registries: dict[str, Any]):
        self.registries = registries

    def collect(self):
        families: dict[str, Metric] = {}
        for name, registry in self.registries.items():
            for family in registry.collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                                 family.unit))
                merged.samples += [sample._replace(labels={**sample.labels, LABEL: name}) for sample in family.samples]
        yield from families.values()


async def _call(app, scope) -> tuple[int, list, bytes]:
    """`app`'s answer to a GET like `scope` (same path, query and headers), whole."""
    status, headers, chunks = 500, [], []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
    await app(dict(scope, method="GET"), receive, send)
    return status, headers, b"".join(chunks)


async def _raw(send, status: int, headers: list, body: bytes) -> None:
    kept = [(key, value) for key, value in headers if key.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": status,
                "headers": [*kept, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, payload: dict) -> None:
    await _raw(send, status, [(b"content-type", b"application/json")], json.dumps(payload).encode())
