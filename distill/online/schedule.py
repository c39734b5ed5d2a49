"""Jobs that start without an alert: at a fixed interval when enough new records exist (`schedule_interval_s`),
and when the records show a teacher version the active student was not distilled from (`teacher_change`)."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from distill.online.settings import TrainerSettings
from runtime.store.records import ShadowStore
from runtime.store.schema import ShadowRow
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersions

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, settings: TrainerSettings, store: ShadowStore, jobs: TrainJobs):
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.versions = StudentVersions(store)
        self._next = time.monotonic() + (settings.schedule_interval_s or 0)

    async def tick(self) -> None:
        await asyncio.to_thread(self._tick)

    def _tick(self) -> None:
        if self.settings.teacher_change:
            self._teacher_changed()
        interval = self.settings.schedule_interval_s
        if interval and time.monotonic() >= self._next:
            self._next = time.monotonic() + interval
            self._scheduled(interval)

    def _scheduled(self, interval: float) -> None:
        since = self._active_since()
        new = self._count(since)
        if new < self.settings.dataset.min_records:
            log.info("schedule: %d new records since the active version, fewer than %d: no job", new,
                     self.settings.dataset.min_records)
            return
        period = int(time.time() // interval)
        job, created = self.jobs.create("schedule", {"new_records": new}, key=f"schedule:{interval:g}:{period}")
        if created:
            log.info("schedule: job %d for %d new records", job.id, new)

    def _teacher_changed(self) -> None:
        """The newest record's teacher version differs from the one the active student learned from."""
        newest = self._newest_teacher_version()
        slot = self.versions.slot()
        if newest is None or slot.active is None:
            return
        figures = self.versions.get(slot.active).figures or {}
        learned_from = figures.get("teacher_version")
        if learned_from is None or learned_from == newest:
            return
        job, created = self.jobs.create("teacher", {"teacher_version": newest, "was": learned_from},
                                        key=f"teacher:{newest}")
        if created:
            log.info("the teacher is now %s (the active student learned from %s): job %d", newest, learned_from,
                     job.id)

    def _active_since(self):
        slot = self.versions.slot()
        return self.versions.get(slot.active).changed_at if slot.active else None

    def _count(self, since) -> int:
        with Session(self.store.engine) as session:
            query = select(func.count()).select_from(ShadowRow)
            if since is not None:
                query = query.where(ShadowRow.created_at >= self.store._db_time(since))
            return session.scalar(query) or 0

    def _newest_teacher_version(self) -> str | None:
        with Session(self.store.engine) as session:
            return session.scalar(select(ShadowRow.teacher_version).order_by(ShadowRow.id.desc()).limit(1))
