"""The shadow worker: off the request path, the teacher scores sampled student answers and answers itself.

Serving hands a finished request over with `offer`, which never waits: the job goes into a bounded queue, or is
dropped and counted when the queue is full. A fixed number of worker tasks (the concurrency limit toward the
teacher) take jobs, each under a timeout, so a slow or dead teacher costs shadow jobs, never client requests.
Results go to the metrics and to the store (in a thread; a failing store drops the record with a counter and a
log line).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from gateway.backends.base import Backend, GenerationRequest, SamplingParams, TokenLogprob, collect
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.shadow.divergence import Divergence, divergence
from gateway.shadow.scrub import Scrubber
from gateway.shadow.store import RecordRejected, ShadowRecord, ShadowStore
from router.policy import RouteDecision
from router.records import floor

log = logging.getLogger(__name__)
PRUNE_EVERY = 100  # writes between retention passes

@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    kind: str  # "shadow": the student answered, compare; "escalation": the student did not finish
    messages: tuple[dict, ...]
    student_answer: str
    student_tokens: tuple[TokenLogprob, ...]
    decision: RouteDecision
    student_model: str
    max_tokens: int
    created_at: datetime


@dataclass(frozen=True)
class ShadowConfig:
    sample_rate: float
    record_escalations: bool
    top_logprobs: int
    queue_size: int
    concurrency: int
    timeout_s: float
    window: int  # requests in the rolling divergence gauges
    student_version: str | None = None
    adapter_version: str | None = None


class ShadowWorker:
    def __init__(self, config: ShadowConfig, teacher: Backend, store: ShadowStore | None, scrubber: Scrubber,
                 metrics: GatewayMetrics, seed: int | None = None, store_down: bool = False):
        self.config = config
        self.teacher = teacher
        self.store = store
        self.store_down = store_down  # configured but could not be opened: records are dropped and counted
        self._writes_since_prune = 0
        self.scrub = scrubber
        self.metrics = metrics
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=config.queue_size)
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task] = []
        self._recent: deque[Divergence] = deque(maxlen=config.window)
        self._writes = asyncio.Semaphore(1)  # one store write at a time: SQLite has one writer anyway

    # ------------------------------------------------------------------------------------------------ request side

    def wants(self) -> bool:
        """Decide, before a request starts, whether a student answer to it should be shadowed."""
        return self.config.sample_rate > 0 and self._rng.random() < self.config.sample_rate

    def offer(self, job: ShadowJob) -> bool:
        """Queue a finished request's job; never blocks. False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels("queue_full").inc()
            return False
        self.metrics.shadow_sampled.labels(job.kind).inc()
        self.metrics.shadow_queue.inc()  # counted, not read at scrape time: several workers' queues add up
        return True

    # ------------------------------------------------------------------------------------------------ worker side

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"shadow-{index}")
                       for index in range(self.config.concurrency)]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued job is done (tests, graceful shutdown)."""
        await self.queue.join()

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            self.metrics.shadow_queue.dec()
            try:
                await asyncio.wait_for(self.process(job), timeout=self.config.timeout_s)
            except TimeoutError:
                self.metrics.shadow_failed.labels("timeout").inc()
                log.warning("shadow job %s timed out after %.0f s (teacher slow or down)", job.request_id,
                            self.config.timeout_s)
            except GatewayError as error:
                self.metrics.shadow_failed.labels("teacher").inc()
                log.warning("shadow job %s: teacher failed: %s", job.request_id, error)
            except Exception:  # a bug here must not kill the worker task
                self.metrics.shadow_failed.labels("internal").inc()
                log.exception("shadow job %s failed", job.request_id)
            finally:
                self.queue.task_done()

    async def process(self, job: ShadowJob) -> ShadowRecord:
        k = self.config.top_logprobs
        messages = list(job.messages)
        teacher_text, teacher_tokens = await self._teacher_answer(job, messages)
        scored, figures = None, None
        if job.kind == "shadow" and job.student_answer:
            scored = (await self.teacher.score(messages, job.student_answer, k)).tokens
            figures = divergence(job.student_tokens, scored, job.student_answer, teacher_text)
            self._observe(figures)
        record = ShadowRecord(
            request_id=job.request_id, created_at=job.created_at, kind=job.kind, student_model=job.student_model,
            student_version=self.config.student_version, adapter_version=self.config.adapter_version,
            teacher_model=self.teacher.info.model, route=job.decision.route, route_reason=job.decision.reason,
            confidence=_finite(job.decision.score), threshold=_finite(job.decision.threshold),
            prompt=self.scrub.messages(messages), student_answer=job.student_answer,
            student_tokens=_tokens_json(job.student_tokens), teacher_scores=_tokens_json(scored) if scored else None,
            teacher_answer=teacher_text, teacher_tokens=_tokens_json(teacher_tokens),
            aligned=figures.aligned if figures else None, mean_kl=_finite(figures.mean_kl) if figures else None,
            top1_agreement=_finite(figures.top1_agreement) if figures else None,
            teacher_nll=figures.teacher_nll if figures else None,
            answers_agree=figures.answers_agree if figures else None,
            field_agreement=figures.field_agreement if figures else None)
        await self._store(record)
        return record

    async def _teacher_answer(self, job: ShadowJob, messages: list[dict]) -> tuple[str, tuple[TokenLogprob, ...]]:
        request = GenerationRequest(f"shadow-{uuid.uuid4().hex}", tuple(messages), SamplingParams(
            max_tokens=job.max_tokens, temperature=0.0, top_logprobs=self.config.top_logprobs))
        answer = await collect(self.teacher.generate(request))
        return answer.text, answer.logprobs

    def _observe(self, figures: Divergence) -> None:
        metrics = self.metrics
        metrics.shadow_nll.observe(figures.teacher_nll)
        if figures.aligned:
            metrics.shadow_kl.observe(figures.mean_kl)
            metrics.shadow_top1.observe(figures.top1_agreement)
        else:
            metrics.shadow_unaligned.inc()
        if figures.answers_agree is not None:
            metrics.shadow_answers.labels(str(figures.answers_agree).lower()).inc()
        self._recent.append(figures)
        aligned = [item for item in self._recent if item.aligned]
        if aligned:
            metrics.shadow_kl_rolling.set(sum(item.mean_kl for item in aligned) / len(aligned))
            metrics.shadow_top1_rolling.set(sum(item.top1_agreement for item in aligned) / len(aligned))
        answered = [item.answers_agree for item in self._recent if item.answers_agree is not None]
        if answered:
            metrics.shadow_agreement_rolling.set(sum(answered) / len(answered))

    async def _store(self, record: ShadowRecord) -> None:
        if self.store is None:
            if self.store_down:
                self.metrics.shadow_dropped.labels("store_unavailable").inc()
            return
        started = time.monotonic()
        try:
            async with self._writes:
                await asyncio.to_thread(self.store.write, record)
        except RecordRejected as error:
            self.metrics.shadow_dropped.labels("rejected").inc()
            log.warning("shadow record rejected: %s", error)
        except (SQLAlchemyError, OSError) as error:
            self.metrics.shadow_dropped.labels("store_error").inc()
            log.warning("shadow store write failed, record %s dropped: %s", record.request_id, error)
        else:
            self.metrics.shadow_store_write.observe(time.monotonic() - started)
            self._writes_since_prune += 1
            if self._writes_since_prune >= PRUNE_EVERY:
                self._writes_since_prune = 0
                await self._prune()

    async def _prune(self) -> None:
        try:
            async with self._writes:
                removed = await asyncio.to_thread(self.store.prune)
        except (SQLAlchemyError, OSError) as error:
            log.warning("shadow store retention failed: %s", error)
        else:
            if removed:
                log.info("shadow store retention removed %d records", removed)


def new_job(kind: str, generation: GenerationRequest, answer: str, tokens: tuple[TokenLogprob, ...],
            decision: RouteDecision, student_model: str) -> ShadowJob:
    return ShadowJob(request_id=generation.request_id, kind=kind, messages=generation.messages, student_answer=answer,
                     student_tokens=tokens, decision=decision, student_model=student_model,
                     max_tokens=generation.sampling.max_tokens, created_at=datetime.now(UTC))


def _tokens_json(tokens) -> list:
    return [{"token": entry.token, "logprob": floor(entry.logprob),
             "top": [[alternative.token, floor(alternative.logprob)] for alternative in entry.top_logprobs]}
            for entry in tokens or ()]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
