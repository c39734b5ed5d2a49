"""Start and stop the shadow worker and its store with the gateway (from `GatewaySettings.shadow`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.shadow.scrub import Scrubber
from gateway.shadow.worker import ShadowConfig, ShadowWorker
from runtime.contract import Backend
from runtime.redact import redact
from runtime.store.records import ShadowStore

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_shadow(settings: GatewaySettings, backends: dict[str, Backend], metrics: GatewayMetrics
                      ) -> AsyncIterator[ShadowWorker | None]:
    shadow = settings.shadow
    if not shadow.enabled or "teacher" not in backends:
        yield None
        return
    scrubber = Scrubber(shadow.scrub_patterns)
    store, store_down = None, False

    def open_store() -> ShadowStore:
        return ShadowStore(shadow.store_url, max_age=timedelta(days=shadow.max_age_days) if shadow.max_age_days
                           else None, max_rows=shadow.max_rows, max_record_bytes=shadow.max_record_bytes)

    if shadow.store_url:
        try:
            store = await asyncio.to_thread(open_store)
        except (SQLAlchemyError, OSError) as error:  # serve anyway: shadow records are not worth an outage
            store_down = True
            log.error("shadow store %s cannot be opened (%s); serving without it and trying again every 30 s; "
                      "records meanwhile are counted in kdgate_shadow_dropped_total{reason=\"store_unavailable\"}",
                      redact(shadow.store_url), error)
    config = ShadowConfig(sample_rate=shadow.sample_rate, record_escalations=shadow.record_escalations,
                          top_logprobs=shadow.top_logprobs, queue_size=shadow.queue_size,
                          concurrency=shadow.concurrency, timeout_s=shadow.timeout_s, window=shadow.window,
                          student_version=settings.student.version,
                          adapter_version=settings.student.adapter_version,
                          teacher_version=settings.teacher.version, drain_timeout_s=shadow.drain_timeout_s, retry_for_s=shadow.retry_for_s)
    worker = ShadowWorker(config, backends["teacher"], store, scrubber, metrics, store_down=store_down,
                          reopen=open_store)
    worker.start()
    try:
        yield worker
    finally:
        await worker.aclose()
        if worker.store is not None:
            worker.store.close()
