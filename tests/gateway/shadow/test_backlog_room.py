"""The worker's write path keeps the drift sample's jobs when the store is full of the others: a run of the drift
loop on the SmolLM2 pair (a teacher serving 60 % of a drifted traffic and answering each recorded escalation again)
held 256 stored jobs, `shadow.queue_size`, and dropped 330 offered jobs of both classes, the drift sample's among
them."""

from __future__ import annotations

from dataclasses import replace

import httpx

from gateway.metrics import GatewayMetrics
from gateway.shadow.scrub import Scrubber
from gateway.shadow.worker import ShadowConfig, ShadowWorker
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo
from runtime.store.records import ShadowStore
from tests.gateway.shadow.test_jobs import job


async def test_a_store_full_of_escalations_still_takes_the_drift_samples_jobs(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path}/shadow.sqlite3")
    metrics = GatewayMetrics()
    async with httpx.AsyncClient() as client:  # the teacher is never called: nothing here claims a job
        teacher = HttpBackend(BackendInfo("teacher", "t", "http"), "http://127.0.0.1:9/v1", client)
        config = ShadowConfig(sample_rate=0.5, record_escalations=True, top_logprobs=5, queue_size=2, concurrency=1,
                              timeout_s=5.0, window=10)
        worker = ShadowWorker(config, teacher, store, Scrubber(()), metrics)
        try:
            escalation = replace(job("e0"), kind="escalation")
            await worker._persist([escalation, replace(escalation, request_id="e1")])
            await worker._persist([replace(escalation, request_id="e2"), replace(job("d0"), drift=True)])
            assert worker.jobs.backlog() == {True: 1, False: 2}
            assert metrics.shadow_dropped.labels("queue_full")._value.get() == 1  # e2, not the drift sample's
            assert metrics.shadow_pending._value.get() == 3
        finally:
            store.close()
