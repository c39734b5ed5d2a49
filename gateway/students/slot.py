"""The student slot: the one object that says which student serves a request in this gateway process.

Each request takes a *lease* on one served student when it starts and keeps it to its last byte, so a request
finishes on the version it started on and no stream ever mixes two versions (a handoff or a fallback inside that
request goes to the teacher, never to another student). A switch changes what new leases get; a version that no
longer serves is closed once its last lease is returned (the local engine's weights are freed then).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.breaker import CircuitBreaker
from router.policy import RoutingPolicy
from runtime.contract import Backend

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedStudent:
    """One loaded version: its backend, the routing policy calibrated for it, and its open leases."""

    version: str
    backend: Backend
    policy: RoutingPolicy
    breaker: CircuitBreaker | None = None  # its own: a failing canary does not open the active version's circuit
    handoff_min_prob: float | None = None  # its own handoff floor (refitted by the trainer); None: the gateway's
    leases: int = 0
    retired: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.leases -= 1
        if self.retired and self.leases == 0:
            asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            await self.backend.aclose()
        except Exception:  # closing a retired backend must not disturb serving
            log.exception("closing retired student version %s failed", self.version)
        else:
            log.info("student version %s drained and closed", self.version)


@dataclass(frozen=True)
class Lease:
    student: ServedStudent
    canary: bool  # chosen as the canary for this request

    @property
    def version(self) -> str:
        return self.student.version

    def release(self) -> None:
        self.student.release()


class StudentSlot:
    def __init__(self, active: ServedStudent, seed: int | None = None):
        self.active = active
        self.canary: ServedStudent | None = None
        self.canary_fraction = 0.0
        self._rng = random.Random(seed)

    def acquire(self, version: str | None = None) -> Lease:
        """The student for one request: `version` when the client pinned a serving one, else the canary for
        `canary_fraction` of requests and the active one for the rest."""
        if version is not None and self.canary is not None and version == self.canary.version:
            canary = True
        elif version is not None and version == self.active.version:
            canary = False
        else:
            canary = self.canary is not None and self._rng.random() < self.canary_fraction
        student = self.canary if canary else self.active
        student.leases += 1
        return Lease(student, canary)

    @contextmanager
    def held(self, version: str | None) -> Iterator[Backend | None]:
        """The backend of `version` (the active one for None) held by a lease while the caller uses it, so a switch
        cannot close it underneath; None when that version no longer serves (work off the request path for a
        version that has been replaced is not done on another one)."""
        student = next((item for item in self.serving() if version is None and item is self.active
                        or item.version == version), None)
        if student is None:
            yield None
            return
        student.leases += 1
        try:
            yield student.backend
        finally:
            student.release()

    def serving(self) -> list[ServedStudent]:
        return [self.active] + ([self.canary] if self.canary is not None else [])

    def switch(self, active: ServedStudent, canary: ServedStudent | None, fraction: float) -> None:
        """New leases get the new versions at once; the ones that left are closed after their last lease."""
        before = set(self.serving())
        self.active, self.canary, self.canary_fraction = active, canary, fraction if canary is not None else 0.0
        for student in before - set(self.serving()):
            retire(student)

    async def aclose(self) -> None:
        for student in self.serving():
            student.retired = True
            await student._close()


DRAIN_LIMIT_S = 600.0  # a version no longer serving is closed after this even if a lease was never given back


def retire(student: ServedStudent) -> None:
    """No new leases go to `student`; it is closed when its last lease returns (or after `DRAIN_LIMIT_S`)."""
    student.retired = True
    if student.leases == 0:
        asyncio.get_running_loop().create_task(student._close())
    else:
        asyncio.get_running_loop().create_task(_close_late(student))


async def _close_late(student: ServedStudent) -> None:
    try:
        async with asyncio.timeout(DRAIN_LIMIT_S):
            await student.closed.wait()
    except TimeoutError:
        log.warning("student version %s still had %d leases after %.0f s; closing it", student.version,
                    student.leases, DRAIN_LIMIT_S)
        await student._close()
