"""Operational endpoints: liveness, readiness (per backend), the model list and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from gateway.chat.protocol import ModelCard, ModelList
from gateway.logs import escape
from gateway.workers import multiprocess_dir, scrape_registry
from runtime.errors import GatewayError, NotFound, UpstreamUnavailable

router = APIRouter()


@router.get("/healthz")
@router.get("/health", include_in_schema=False)  # vLLM's name, so probes written for vLLM work on `kdgate engine`
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    backends = request.app.state.chat.backends
    results = await asyncio.gather(*(_check(backend) for backend in backends.values()))
    report = dict(zip(backends, results, strict=True))
    metrics = request.app.state.metrics
    for name, result in report.items():
        metrics.backend_up.labels(name).set(1 if result["ready"] else 0)
    ready = all(result["ready"] for result in report.values())
    principal = getattr(request.state, "principal", None)
    if request.app.state.auth_required and not (principal is not None and principal.admin):
        report = {name: {"ready": result["ready"]} for name, result in report.items()}  # no URLs or errors
    return JSONResponse({"status": "ready" if ready else "unready", "backends": report},
                        status_code=200 if ready else 503)


@router.get("/readyz/adapters")
async def required_adapters(request: Request) -> dict:
    """The LoRA adapters every student replica must list before it takes traffic (the serving versions'), by
    name: the chart's student readiness probe (helm/kdgate/files/student_ready.py) compares them with the
    replica's /v1/models. Open like /readyz; paths stay inside. A store that cannot be read is a 503 (the probe
    then lets /health decide), not an error of the gateway's."""
    try:
        return {"adapters": sorted(await request.app.state.students.serving_adapters())}
    except (SQLAlchemyError, OSError) as error:
        raise UpstreamUnavailable(f"the record store cannot be read now ({type(error).__name__}), so the serving "
                                  "versions' adapters are not known; try again", backend="store") from None


async def _check(backend) -> dict:
    result = {"kind": backend.info.kind, "model": backend.info.model}
    try:
        async with asyncio.timeout(10):
            await backend.check_ready()
    except GatewayError as error:
        return result | {"ready": False, "error": error.message}
    except TimeoutError:
        return result | {"ready": False, "error": "readiness check timed out after 10 s"}
    return result | {"ready": True}


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    chat = request.app.state.chat
    lengths = [backend.info.max_model_len for backend in chat.backends.values() if backend.info.max_model_len]
    longest = min(lengths) if lengths else None
    adapters = [ModelCard(id=name, root=name, parent=chat.served_model, max_model_len=longest)
                for name in chat.model_names()[1:]]
    return ModelList(data=[ModelCard(id=chat.served_model, root=chat.served_model, max_model_len=longest),
                           *adapters])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(request: Request, model_id: str) -> ModelCard:
    """One model of the list (the openai SDK's `models.retrieve`); 404 naming the ones there are."""
    cards = (await list_models(request)).data
    for card in cards:
        if card.id == model_id:
            return card
    raise NotFound(f"no model `{escape(model_id)}` here; this gateway serves "
                   f"{', '.join(f'`{card.id}`' for card in cards)} (GET /v1/models)", parameter="model")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    folder = multiprocess_dir()  # several workers: every worker's samples, read from their shared files
    registry = scrape_registry(folder) if folder else request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
