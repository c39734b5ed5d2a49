"""vLLM's runtime LoRA endpoints on `kdgate engine`, so the gateway's promotion path is tested against real servers.

Same paths, bodies, status codes and messages as vLLM 0.33 (`vllm/entrypoints/openai/serving_models.py`):

    POST /v1/load_lora_adapter   {"lora_name", "lora_path", "load_inplace": false}
         200 text "Success: LoRA adapter '<name>' added successfully."
         400 the name is loaded already (and `load_inplace` is false), or is the base model's; the path is no adapter
    POST /v1/unload_lora_adapter {"lora_name"}
         200 text "Success: LoRA adapter '<name>' removed successfully."   404 no adapter of that name

Enabled as vLLM enables them: `kdgate engine --enable-lora` with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1` (or `true`);
otherwise the paths do not exist (404). An adapter is addressed by `model: <lora_name>` and listed in /v1/models
with the base model as `parent`. Unlike vLLM, which batches many adapters over one copy of the base weights, each
adapter here is its own local engine with the adapter merged: one model's memory per adapter, fine for the
small models this server is for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from runtime.backends.local import LocalBackend
from runtime.engine.engine import EngineSettings
from runtime.errors import envelope

log = logging.getLogger(__name__)
router = APIRouter(tags=["lora"])
IDLE_POLL_S = 0.2


def runtime_lora_allowed() -> bool:
    """vLLM's own reading of the switch (`vllm/envs.py`)."""
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def _error(message: str, status: int, kind: str) -> JSONResponse:
    return JSONResponse(envelope(message, kind), status_code=status)


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request, body: LoadLoRAAdapterRequest):
    chat = request.app.state.chat
    base: EngineSettings = request.app.state.lora_base
    adapters = chat.router.adapters
    if body.lora_name == chat.served_model:
        return _error(f"The lora adapter name '{body.lora_name}' conflicts with a served base model.", 400,
                      "InvalidUserInput")
    if body.lora_name in adapters and not body.load_inplace:
        return _error(f"The lora adapter '{body.lora_name}' has already been loaded. If you want to load the adapter "
                      "in place, set 'load_inplace' to True.", 400, "InvalidUserInput")
    try:
        backend = await asyncio.to_thread(LocalBackend, "engine", replace(base, adapter_dir=Path(body.lora_path)),
                                          body.lora_name)
    except (OSError, ValueError) as error:
        return _error(f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path} ({error})", 400,
                      "BadRequestError")
    replaced = adapters.get(body.lora_name)
    adapters[body.lora_name] = backend
    if replaced is not None:
        asyncio.create_task(close_when_idle(replaced))
    log.info("loaded LoRA adapter %s from %s", body.lora_name, body.lora_path)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request, body: UnloadLoRAAdapterRequest):
    adapters = request.app.state.chat.router.adapters
    backend = adapters.pop(body.lora_name, None)
    if backend is None:
        return _error(f"The lora adapter '{body.lora_name}' cannot be found.", 404, "NotFoundError")
    asyncio.create_task(close_when_idle(backend))
    log.info("unloaded LoRA adapter %s", body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def close_when_idle(backend: LocalBackend) -> None:
    """An adapter no longer addressable finishes the requests it has, then frees its weights."""
    while not backend.engine.idle():
        await asyncio.sleep(IDLE_POLL_S)
    await backend.aclose()
