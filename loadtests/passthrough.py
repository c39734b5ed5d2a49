"""A bare passthrough proxy: FastAPI and one shared httpx client streaming the upstream's bytes unchanged.

The floor any Python gateway can reach: no parsing, no routing, no metrics. The overhead benchmark puts it beside
kdgate and LiteLLM so that what kdgate adds on top of "a Python hop" is visible.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


def create_app(upstream: str) -> FastAPI:
    upstream = upstream.rstrip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600.0, connect=10.0),
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=512))
        yield
        await app.state.client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request):
        client: httpx.AsyncClient = request.app.state.client
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream_request = client.build_request(request.method, "/" + path, headers=headers,
                                                content=await request.body())
        response = await client.send(upstream_request, stream=True)
        passed = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=passed,
                                     background=BackgroundTask(response.aclose))
        body = await response.aread()
        await response.aclose()
        return Response(body, status_code=response.status_code, headers=passed)

    return app
