"""The shadow worker's tasks end when they are cancelled, whatever they were waiting on. At SIGTERM a worker whose
drain ran out of time is cancelled right after the drain's last wake-up call; under Python 3.11's
`asyncio.wait_for`, a task whose awaited future was already done when the cancel came got the result and lost the
cancellation, kept claiming jobs, and the gateway never exited (seen 2 times in about 40 runs of
tests/gateway/test_graceful_shutdown.py on 2 busy cores: still up 120 s after its last stream, its log stopped at
"shadow work not finished after 10 s at shutdown")."""

from __future__ import annotations

import asyncio

import httpx

from gateway.metrics import GatewayMetrics
from gateway.shadow.scrub import Scrubber
from gateway.shadow.worker import ShadowConfig, ShadowWorker
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo
from runtime.store.records import ShadowStore


async def test_a_worker_woken_and_cancelled_in_one_step_stops(tmp_path, engine_server):
    store = ShadowStore(f"sqlite:///{tmp_path}/shadow.sqlite3")
    async with httpx.AsyncClient() as client:
        teacher = HttpBackend(BackendInfo("teacher", engine_server.model, "http"), engine_server.base_url, client)
        config = ShadowConfig(sample_rate=1.0, record_escalations=True, top_logprobs=5, queue_size=100,
                              concurrency=4, timeout_s=5.0, window=10)
        worker = ShadowWorker(config, teacher, store, Scrubber(()), GatewayMetrics())
        worker.start()
        try:
            await asyncio.sleep(0.5)  # every task idles, waiting to be woken
            worker._wake.set()  # what the drain does every 50 ms while jobs are left
            for task in worker._tasks:
                task.cancel()
            _, running = await asyncio.wait(worker._tasks, timeout=5)
            names = sorted(task.get_name() for task in running)
            assert not running, f"still running 5 s after they were cancelled: {names}"
        finally:
            for task in worker._tasks:
                task.cancel()
            store.close()
