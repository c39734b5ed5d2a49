"""The shadow worker: off the request path, the teacher scores sampled student answers and answers itself.

Serving hands a finished request over with `offer`, which never waits. With a store, the job is then made durable
(`gateway.shadow.jobs`): a writer task commits offered jobs in batches, and only then are they acknowledged; worker
tasks (the concurrency limit toward the teacher) claim jobs from the store, each under a timeout, and complete them
by writing the record and deleting the job together. A job survives SIGKILL as its row and is resumed by the next
start; on SIGTERM the worker drains for `shadow.drain_timeout_s` and leaves the rest for the next start. A slow or
dead teacher costs shadow work, never client requests: failed jobs are retried with backoff (1 s doubling to 60 s)
and dropped, counted, only when older than `shadow.retry_for_s`: a teacher restart delays shadow work, loses none.
Without a store (metrics only, or a store that could not be opened yet, which is retried in the background), jobs
wait in a bounded memory queue. Either way the queue is bounded: beyond `shadow.queue_size` jobs are dropped and
counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from gateway.cost import CostMeter
from gateway.logs import Outage
from gateway.metrics import GatewayMetrics
from gateway.shadow.divergence import Divergence, divergence
from gateway.shadow.jobs import Claimed, JobQueue, ShadowJob, within_room
from gateway.shadow.masking import scores_under
from gateway.shadow.scrub import Scrubber
from gateway.tools.grammar import tool_constraint
from router.policy import RouteDecision
from runtime.constraints.languages import Constraint
from runtime.constraints.languages import constraint as constraint_of
from runtime.contract import Backend, Collected, GenerationRequest, SamplingParams, TokenLogprob, collect
from runtime.errors import GatewayError, InvalidRequest
from runtime.store.records import RecordRejected, ShadowRecord, ShadowStore, has_token_ids, tokens_json

log = logging.getLogger(__name__)
PRUNE_EVERY = 100  # writes between retention passes
WRITE_BATCH = 64  # jobs committed together by the writer
IDLE_POLL_S = 1.0  # an idle worker looks for resumed or retried jobs this often
REOPEN_EVERY_S = 30.0  # a store that could not be opened is tried again this often
PENDING_EVERY_S = 1.0  # a busy worker counts the stored jobs for `kdgate_shadow_pending_jobs` at most this often
STORE_ERRORS = (SQLAlchemyError, OSError)


@dataclass(frozen=True)
class ShadowConfig:
    sample_rate: float
    record_escalations: bool
    top_logprobs: int
    queue_size: int
    concurrency: int
    timeout_s: float
    window: int  # requests in the rolling divergence gauges
    student_version: str | None = None  # of the configured student; a job's own version wins
    adapter_version: str | None = None
    teacher_version: str | None = None
    drain_timeout_s: float = 10.0
    retry_for_s: float = 1800.0


class ShadowWorker:
    def __init__(self, config: ShadowConfig, teacher: Backend, store: ShadowStore | None, scrubber: Scrubber,
                 metrics: GatewayMetrics, seed: int | None = None, store_down: bool = False,
                 reopen: Callable[[], ShadowStore] | None = None):
        self.config = config
        self.teacher = teacher
        self.store = store
        self.jobs = JobQueue(store, config.retry_for_s) if store is not None else None
        self._store_outage = Outage(log, "storing offered shadow jobs")
        self._claim_outage = Outage(log, "claiming stored shadow jobs")
        self._file_outage = Outage(log, "putting the deleted shadow store file back")
        self.store_down = store_down  # configured but could not be opened: retried with `reopen`
        self._reopen = reopen
        self._writes_since_prune = 0
        self.scrub = scrubber
        self.metrics = metrics
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=config.queue_size)  # offered, not yet durable
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task] = []
        self._recent: deque[Divergence] = deque(maxlen=config.window)
        self._writes = asyncio.Semaphore(1)  # one store write at a time: SQLite has one writer anyway
        self._wake = asyncio.Event()
        self._busy = 0  # jobs being processed now
        self._pending_counted = -math.inf  # when `kdgate_shadow_pending_jobs` was last set from a count
        self.on_divergence: Callable[[str | None, float], None] | None = None  # (student version, mean KL)
        # the backend of a student version while it serves (None inside when it no longer does): a drift
        # escalation's whole student answer comes from the version that started the request
        self.student_of: Callable[[str | None], AbstractContextManager[Backend | None]] | None = None
        self.cost: CostMeter | None = None  # the teacher calls' dollars, when the backends are priced

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

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(), name="shadow-writer")]
        self._tasks += [asyncio.create_task(self._run(), name=f"shadow-{index}")
                        for index in range(self.config.concurrency)]
        if self.store_down and self._reopen is not None:
            self._tasks.append(asyncio.create_task(self._reopen_store(), name="shadow-reopen"))

    async def aclose(self) -> None:
        """Drain what can be done within `drain_timeout_s` (SIGTERM's path); durable jobs left over wait for the
        next start. Said when there is work left, so that a Ctrl-C waiting on it is not a silent pause."""
        left = self.queue.qsize() + (await asyncio.to_thread(self.jobs.pending) if self.jobs else self._busy)
        if left and self.config.drain_timeout_s > 0:
            log.info("shutting down: finishing %d shadow job%s first, for at most %.0f s (shadow.drain_timeout_s)",
                     left, "" if left == 1 else "s", self.config.drain_timeout_s)
        try:
            await self.drain(timeout=self.config.drain_timeout_s)
        except TimeoutError:
            log.warning("shadow work not finished after %.0f s at shutdown; %s", self.config.drain_timeout_s,
                        "the stored jobs resume at the next start" if self.jobs else "in-memory jobs are dropped")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every job offered so far is done (written and processed), at most `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self.queue.join()
            while self._busy or (self.jobs is not None and await asyncio.to_thread(self.jobs.pending)):
                self._wake.set()
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------------------------------------ worker side

    async def _writer(self) -> None:
        """Offered jobs made durable in batches: acknowledged once committed. Idle while there is no store."""
        while True:
            if self.jobs is None:
                await self._idle()
                continue
            batch = [await self.queue.get()]
            while len(batch) < WRITE_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._persist(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()
                    self.metrics.shadow_queue.dec()

    async def _persist(self, batch: list[ShadowJob]) -> None:
        """Commit `batch`; while the store fails, hold it and try again with backoff (offered jobs wait in the
        bounded memory queue meanwhile). Dropped, and counted, only if the worker is stopped first."""
        delay = 0.5
        await self._keep_store_file()
        try:
            while True:
                try:
                    async with self._writes:
                        backlog = await asyncio.to_thread(self.jobs.backlog)
                        kept = within_room(batch, backlog, self.config.queue_size)
                        stored = await asyncio.to_thread(self.jobs.enqueue, kept) if kept else 0
                    self._pending_is(sum(backlog.values()) + stored)
                    break
                except STORE_ERRORS as error:
                    self._store_outage.failed(error, f"{len(batch)} offered shadow jobs held in memory and tried "
                                                     "again until the store answers")
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, REOPEN_EVERY_S)
        except asyncio.CancelledError:
            self.metrics.shadow_dropped.labels("store_error").inc(len(batch))
            log.warning("%d offered shadow jobs dropped at shutdown: the store did not take them", len(batch))
            raise
        self._store_outage.recovered()
        if len(kept) < len(batch):
            self.metrics.shadow_dropped.labels("queue_full").inc(len(batch) - len(kept))
        self.metrics.shadow_acknowledged.inc(stored)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if self.jobs is None:  # no store (yet): jobs are taken from memory
                await self._run_from_memory()
                continue
            try:
                claimed = await asyncio.to_thread(self.jobs.claim, 1, self.config.timeout_s + 5.0)
            except STORE_ERRORS as error:
                self._claim_outage.failed(error, "stored shadow jobs wait until the store answers")
                await self._idle()
                continue
            self._claim_outage.recovered()
            if not claimed:
                await self._idle()
                continue
            self._busy += 1
            try:
                await self._complete(claimed[0])
            finally:
                self._busy -= 1
            await self._count_pending()

    async def _keep_store_file(self) -> None:
        """A SQLite store file deleted or replaced while open is put back before anything else is written."""
        if self.store is None or self.store.file is None or not self.store.file.moved():
            return
        async with self._writes:
            try:
                found = await asyncio.to_thread(self.store.keep_file)
            except (*STORE_ERRORS, sqlite3.Error) as error:
                self._file_outage.failed(error, f"{self.store.file.path} is tried again at the next idle poll")
                return
        self._file_outage.recovered()
        if found:
            self.metrics.store_restored.inc()
            log.error("the shadow store file %s was %s while the gateway had it open "
                      "(kdgate_store_file_restored_total)", self.store.file.path, found)

    async def _idle(self) -> None:
        await self._keep_store_file()
        self._wake.clear()
        try:
            async with asyncio.timeout(IDLE_POLL_S):
                await self._wake.wait()
        except TimeoutError:
            await self._count_pending(every_s=0.0)

    async def _count_pending(self, every_s: float = PENDING_EVERY_S) -> None:
        """Set `kdgate_shadow_pending_jobs` from a count of the store's jobs, unless one was made in the last
        `every_s`: a worker that always has a job to take never idles, and a backlog is what the gauge is for."""
        if self.jobs is None or time.monotonic() - self._pending_counted < every_s:
            return
        try:
            self._pending_is(await asyncio.to_thread(self.jobs.pending))
        except STORE_ERRORS:
            pass

    def _pending_is(self, count: int) -> None:
        self.metrics.shadow_pending.set(count)
        self._pending_counted = time.monotonic()

    async def _complete(self, claimed: Claimed) -> None:
        job = claimed.job
        record = await self._attempt(job)
        if record is None:
            await self._release(claimed)
            return
        started = time.monotonic()
        try:
            async with self._writes:
                await asyncio.to_thread(self.jobs.complete, claimed, record)
        except RecordRejected as error:
            self.metrics.shadow_dropped.labels("rejected").inc()
            log.warning("shadow record rejected: %s", error)
            await self._release(claimed, final=True)
        except STORE_ERRORS as error:
            log.warning("shadow record %s could not be written: %s", job.request_id, error)
            await self._release(claimed, reason="store_error")
        else:
            self.metrics.shadow_store_write.observe(time.monotonic() - started)
            await self._after_write()

    async def _release(self, claimed: Claimed, final: bool = False, reason: str = "retries_exhausted") -> None:
        """A failed try: the job waits for another, or is dropped for good (counted as `reason`) after its last;
        `final` drops it now (its drop is counted by the caller)."""
        try:
            async with self._writes:
                if final:
                    await asyncio.to_thread(self.jobs.drop, claimed)
                    return
                kept = await asyncio.to_thread(self.jobs.release, claimed)
        except STORE_ERRORS as error:
            log.warning("shadow job %s could not be released (its lease will expire): %s", claimed.job.request_id,
                        error)
            return
        if not kept:
            self.metrics.shadow_dropped.labels(reason).inc()
            log.warning("shadow job %s dropped after %d tries over %.0f s (shadow.retry_for_s)", claimed.job.request_id,
                        claimed.attempts + 1, self.config.retry_for_s)

    async def _attempt(self, job: ShadowJob) -> ShadowRecord | None:
        """The record, or None (counted, logged) when the teacher failed or timed out."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self.process(job)
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
        return None

    async def _run_from_memory(self) -> None:
        try:
            async with asyncio.timeout(IDLE_POLL_S):
                job = await self.queue.get()
        except TimeoutError:
            return
        self._busy += 1
        try:
            if self.jobs is not None:  # the store came back while this task waited: the job is stored after all
                await self._persist([job])
                return
            record = await self._attempt(job)
            if record is not None and self.store_down:
                self.metrics.shadow_dropped.labels("store_unavailable").inc()
        finally:
            self._busy -= 1
            self.queue.task_done()
            self.metrics.shadow_queue.dec()

    async def _reopen_store(self) -> None:
        while self.jobs is None:
            await asyncio.sleep(REOPEN_EVERY_S)
            try:
                store = await asyncio.to_thread(self._reopen)
            except STORE_ERRORS as error:
                log.warning("shadow store still unavailable: %s", error)
                continue
            self.store, self.jobs, self.store_down = store, JobQueue(store, self.config.retry_for_s), False
            log.info("shadow store is available again; shadow jobs are stored from now on")
            self._wake.set()

    async def process(self, job: ShadowJob) -> ShadowRecord:
        k = self.config.top_logprobs
        messages = list(job.messages)
        constraint = await asyncio.to_thread(compiled, job.constraint) if job.constraint is not None else None
        teacher_text, teacher_tokens = await self._teacher_answer(job, messages, constraint)
        scored, figures, masked, whole = None, None, None, None
        if job.kind == "shadow":
            answer, tokens = job.student_answer, job.student_tokens
        elif job.drift:  # an escalation in the drift sample: the student's whole answer, asked for now
            whole = await self._student_answer(job, messages, constraint)
            answer, tokens = (whole.text, whole.logprobs) if whole is not None else ("", ())
        else:
            answer, tokens = "", ()
        if answer:
            tools = constraint.tools if constraint is not None else None
            scoring = await self.teacher.score(messages, answer, k, tools)
            scored = scoring.tokens
            if self.cost is not None:  # one prefill over the prompt and the answer, one token generated
                self.cost.charge_shadow(scoring.prompt_tokens + len(scored), 1)
            compared, masked = scores_under(constraint, scored, answer)
            figures = divergence(tokens, compared, answer, teacher_text)
            if job.kind == "shadow":
                self._observe(figures)
            if job.drift:
                self._observe_drift(job, figures)
        recorded_escalation = job.kind == "escalation" and self.config.record_escalations
        record = ShadowRecord(
            request_id=job.request_id, created_at=job.created_at, kind=job.kind, student_model=job.student_model,
            student_version=job.student_version or self.config.student_version,
            adapter_version=self.config.adapter_version, teacher_model=self.teacher.info.model,
            teacher_version=self.config.teacher_version, token_ids=has_token_ids(job.student_tokens),
            route=job.decision.route, route_reason=job.decision.reason,
            confidence=_finite(job.decision.score), threshold=_finite(job.decision.threshold),
            prompt=self.scrub.messages(messages), student_answer=job.student_answer,
            student_tokens=tokens_json(job.student_tokens), teacher_scores=tokens_json(scored) if scored else None,
            teacher_answer=teacher_text, teacher_tokens=tokens_json(teacher_tokens),
            aligned=figures.aligned if figures else None, mean_kl=_finite(figures.mean_kl) if figures else None,
            top1_agreement=_finite(figures.top1_agreement) if figures else None,
            teacher_nll=figures.teacher_nll if figures else None,
            answers_agree=figures.answers_agree if figures else None,
            field_agreement=figures.field_agreement if figures else None,
            sample_rate=1.0 if recorded_escalation else self.config.sample_rate,
            constraint=job.constraint, constraint_masked=masked, drift_sample=job.drift,
            drift_answer=whole.text if whole is not None else None,
            drift_tokens=tokens_json(whole.logprobs) if whole is not None else None)
        return record

    async def _student_answer(self, job: ShadowJob, messages: list[dict], constraint: Constraint | None
                              ) -> Collected | None:
        """The whole answer of the student version that started the request, drawn with the request's sampling; None
        (counted in `kdgate_drift_missed_total`) when that version no longer serves or the student failed."""
        if self.student_of is None:
            self.metrics.drift_missed.labels("no_student").inc()
            return None
        with self.student_of(job.student_version) as student:
            if student is None:
                self.metrics.drift_missed.labels("version_gone").inc()
                return None
            try:
                answer = await collect(student.generate(student_request(job, messages, constraint,
                                                                        self.config.top_logprobs)))
            except GatewayError as error:
                self.metrics.drift_missed.labels("student_error").inc()
                log.warning("drift job %s: the student failed: %s", job.request_id, error)
                return None
        if self.cost is not None and answer.finish is not None:
            self.cost.charge_shadow(answer.finish.prompt_tokens, answer.finish.completion_tokens, "student")
        return answer

    async def _teacher_answer(self, job: ShadowJob, messages: list[dict], constraint: Constraint | None
                              ) -> tuple[str, tuple[TokenLogprob, ...]]:
        answer = await collect(self.teacher.generate(teacher_request(job, messages, constraint,
                                                                     self.config.top_logprobs)))
        if self.cost is not None and answer.finish is not None:
            self.cost.charge_shadow(answer.finish.prompt_tokens, answer.finish.completion_tokens)
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

    def _observe_drift(self, job: ShadowJob, figures: Divergence) -> None:
        """The drift sample's figures, under the version that answered: only this sample feeds them, so versions
        compare on the same traffic (and the canary is judged on it)."""
        version = job.student_version or self.config.student_version
        self.metrics.observe_drift(version, figures.mean_kl if figures.aligned else None,
                                   figures.top1_agreement if figures.aligned else None, figures.answers_agree)
        if self.on_divergence is not None and figures.aligned:
            self.on_divergence(version, figures.mean_kl)

    async def _after_write(self) -> None:
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


def teacher_request(job: ShadowJob, messages: list[dict], constraint: Constraint | None, top_logprobs: int
                    ) -> GenerationRequest:
    """What the teacher answers the job's request with: greedy, with top-k logprobs and token ids, and held to the
    constraint the student's answer was (the record compares the two answers, and a trainer learns from the
    teacher's as one the client could have been sent)."""
    return GenerationRequest(f"shadow-{uuid.uuid4().hex}", tuple(messages), SamplingParams(
        max_tokens=job.max_tokens, temperature=0.0, top_logprobs=top_logprobs), token_ids=True,
        structured_outputs=constraint.structured_outputs if constraint is not None else None, constraint=constraint,
        tools=constraint.tools if constraint is not None else None)


def student_request(job: ShadowJob, messages: list[dict], constraint: Constraint | None, top_logprobs: int
                    ) -> GenerationRequest:
    """What the student answers a drift escalation's request with: the request's own sampling (greedy for a job
    that kept none), its constraint and tools, with top-k logprobs and token ids for the divergence."""
    kept = dict(job.sampling or {"max_tokens": job.max_tokens, "temperature": 0.0})
    for name in ("stop", "stop_token_ids"):
        kept[name] = tuple(kept.get(name) or ())
    kept["logit_bias"] = tuple(tuple(pair) for pair in kept.get("logit_bias") or ())
    sampling = replace(SamplingParams(**kept), top_logprobs=top_logprobs)
    return GenerationRequest(f"drift-{uuid.uuid4().hex}", tuple(messages), sampling, token_ids=True,
                             structured_outputs=constraint.structured_outputs if constraint is not None else None,
                             constraint=constraint, tools=constraint.tools if constraint is not None else None)


def compiled(spec: dict) -> Constraint:
    """A job's constraint, compiled again (cached: the request compiled the same spec). One that no longer compiles
    (a gateway upgraded while the job waited) is passed to the teacher as the client sent it, and scored unmasked."""
    try:
        return tool_constraint(spec) if "tools" in spec else constraint_of(spec)
    except InvalidRequest as error:
        log.warning("a shadow job's constraint no longer compiles (%s); the teacher gets it as the client sent it, "
                    "and its divergence is not masked", error)
        return Constraint(spec, None)


def new_job(kind: str, generation: GenerationRequest, answer: str, tokens: tuple[TokenLogprob, ...],
            decision: RouteDecision, student_model: str, student_version: str | None = None, drift: bool = False
            ) -> ShadowJob:
    """The job of a finished request. Its constraint is the client's (`Constraint.spec`), not the grammar the
    backends were sent: the record says what was asked, and the worker compiles it again. A drift escalation keeps
    the request's sampling, to draw the student's whole answer as the student would have served it."""
    spec = generation.constraint.spec if generation.constraint is not None else generation.structured_outputs
    sampling = asdict(generation.sampling) if drift and kind == "escalation" else None
    return ShadowJob(request_id=generation.request_id, kind=kind, messages=generation.messages, student_answer=answer,
                     student_tokens=tokens, decision=decision, student_model=student_model,
                     max_tokens=generation.sampling.max_tokens, created_at=datetime.now(UTC),
                     student_version=student_version, constraint=spec, drift=drift, sampling=sampling)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
