"""Start and stop the student side of the gateway: the slot, its follower, the loader and the LoRA client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.students.loader import StudentLoader
from gateway.students.lora import LoraReplicas
from gateway.students.manager import StudentManager
from runtime.backends.factory import http_client
from runtime.store.records import ShadowStore
from runtime.store.versions import StudentVersions

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_students(settings: GatewaySettings, metrics: GatewayMetrics) -> AsyncIterator[StudentManager]:
    """The student manager, serving the store's active version (or the configured student without a store)."""
    store = await _open_store(settings)
    async with http_client(settings.http, [settings.student], always=store is not None) as client:
        loader = StudentLoader(settings, client, metrics)
        student = settings.student
        lora = None
        if student.kind == "http":
            api_key = student.api_key.get_secret_value() if student.api_key else None
            lora = LoraReplicas(client, student.replica_urls or [student.base_url], api_key,
                                from_dns=student.replicas_from_dns)
        manager = StudentManager(settings, loader, metrics,
                                 StudentVersions(store) if store is not None else None, lora)
        try:
            await manager.start()
            yield manager
        finally:
            await manager.aclose()
            if store is not None:
                store.close()


async def _open_store(settings: GatewaySettings) -> ShadowStore | None:
    url = settings.shadow.store_url
    if not settings.students.enabled or not url:
        return None
    try:
        return await asyncio.to_thread(ShadowStore, url)
    except (SQLAlchemyError, OSError) as error:
        log.error("the record store cannot be opened (%s): serving the configured student; student versions are "
                  "unavailable until the gateway restarts with the store reachable", error)
        return None


class LiveRoles(Mapping):
    """Per-role objects (backends, circuit breakers) where the student's is the active version's own, now."""

    def __init__(self, fixed: dict, students: StudentManager, attribute: str):
        self.fixed = fixed
        self.students = students
        self.attribute = attribute  # of ServedStudent: "backend" or "breaker"

    def __getitem__(self, role: str):
        if role == "student":
            return getattr(self.students.slot.active, self.attribute)
        return self.fixed[role]

    def __iter__(self) -> Iterator[str]:
        yield "student"
        yield from (role for role in self.fixed if role != "student")

    def __len__(self) -> int:
        return 1 + sum(role != "student" for role in self.fixed)
