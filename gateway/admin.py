"""Admin endpoints (the admin credential only): what this gateway is running, for ops and for the later student
versions and trainer endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(prefix="/admin")


@router.get("/status")
async def status(request: Request) -> dict:
    """The served model, both backends, the routing and shadow lines of the banner, and the configured keys (names
    and permissions, never digests)."""
    state = request.app.state
    return {"served_model": state.chat.served_model, "backends": {name: {"kind": backend.info.kind, "model":
                                                                           backend.info.model}
                                                                    for name, backend in state.chat.backends.items()},
            "banner": state.banner, "auth_required": state.auth_required,
            "keys": [{"name": principal.name, "permissions": sorted(principal.permissions)}
                     for _, principal in state.credentials.keys if not principal.admin and principal.name != "metrics"]}
