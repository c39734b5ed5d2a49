"""`/admin/v1/students`: register, promote (optionally as a canary), roll back, and see the student versions.

Behind the admin credential (gateway.auth: `/admin/...` needs it; a chat key gets 403). `kdgate student ...` calls
these. A change answers once this gateway serves the new slot; the other processes follow within
`students.poll_interval_s`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.students.manager import StudentManager
from gateway.students.register import Registration, check_registration
from runtime.errors import InvalidRequest, NotFound
from runtime.store.versions import UnknownVersion, VersionExists

router = APIRouter(prefix="/admin/v1/students", tags=["admin"])


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_fraction: float | None = Field(default=None, gt=0, lt=1, description="serve the version to this share "
                                          "of student-served requests beside the active one; none: it becomes "
                                          "the active version")


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="rolled back by hand", max_length=500)


def _students(request: Request) -> StudentManager:
    manager = request.app.state.students
    if manager.versions is None:
        raise InvalidRequest("student versions need the record store (`shadow.store_url`) and `students.enabled`; "
                             "this gateway serves its configured student only")
    return manager


@router.get("")
async def list_students(request: Request) -> dict:
    """Every registered version with its state, and the slot."""
    manager = _students(request)
    versions = await asyncio.to_thread(manager.versions.list)
    return {"slot": manager.status(), "versions": [version.public() for version in versions]}


@router.get("/status")
async def status(request: Request) -> dict:
    """The slot and this process's figures per serving version (requests, errors, teacher share, TTFT, KL)."""
    manager = _students(request)
    return manager.status()


@router.post("", status_code=201)
async def register(request: Request, registration: Registration) -> dict:
    """A new candidate version: a model folder, a LoRA adapter, or a server of its own."""
    manager = _students(request)
    version = await asyncio.to_thread(check_registration, registration, manager)
    try:
        stored = await asyncio.to_thread(manager.versions.register, version)
    except VersionExists as error:
        raise InvalidRequest(str(error), parameter="name") from None
    return stored.public()


@router.get("/{name}")
async def get_student(request: Request, name: str) -> dict:
    manager = _students(request)
    try:
        return (await asyncio.to_thread(manager.versions.get, name)).public()
    except UnknownVersion as error:
        raise NotFound(str(error), parameter="name") from None


@router.post("/{name}/promote")
async def promote(request: Request, name: str, promotion: Promotion | None = None) -> dict:
    manager = _students(request)
    fraction = promotion.canary_fraction if promotion is not None else None
    await manager.promote(name, fraction)
    return manager.status()


@router.post("/rollback")
async def rollback(request: Request, body: Rollback | None = None) -> dict:
    manager = _students(request)
    await manager.rollback(body.reason if body is not None else "rolled back by hand")
    return manager.status()
