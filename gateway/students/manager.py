"""One gateway process's side of student versions: follow the store's slot, and carry out promotions and rollbacks.

Every process polls the slot row (`students.poll_interval_s`) and, when its revision moves, loads what it does not
serve yet and switches its `StudentSlot`. The process that receives an admin call prepares the change first (loads
the new weights, or the LoRA adapter on every student replica), then writes the slot with a compare-and-swap, then
switches itself at once; the others follow at their next poll. The canary is judged on every poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from gateway.logs import Outage
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.students.canary import VersionFigures, judge, judgment
from gateway.students.loader import StudentLoader, adapter_name, initial_version
from gateway.students.lora import AdapterRefused, LoraReplicas
from gateway.students.slot import Lease, ServedStudent, StudentSlot, retire
from runtime.contract import Backend
from runtime.errors import Conflict, InvalidRequest, NotFound, UpstreamError
from runtime.store.versions import Slot, SlotChanged, StudentVersion, StudentVersions, UnknownVersion, VersionError

log = logging.getLogger(__name__)


class StudentManager:
    def __init__(self, settings: GatewaySettings, loader: StudentLoader, metrics: GatewayMetrics,
                 versions: StudentVersions | None, lora: LoraReplicas | None = None):
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self.versions = versions
        self.lora = lora
        self.slot: StudentSlot | None = None
        self.revision = -1
        self.figures: dict[str, VersionFigures] = {}
        self.on_switch: list[Callable[[], None]] = []  # e.g. the teacher-share window restarts
        self._loaded: dict[str, ServedStudent] = {}
        self._changing = asyncio.Lock()  # one admin change at a time in this process
        self._applying = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._reconciler: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------------------ life

    async def start(self) -> None:
        if self.versions is None:  # no store: the configured student, for good
            self.slot = StudentSlot(await self.loader.load(initial_version(self.settings)))
            self._serving_changed()
            return
        seen = await asyncio.to_thread(self.versions.seed, initial_version(self.settings))
        async with self._applying:
            try:
                await self._apply(seen)
            except (OSError, ValueError) as error:
                raise RuntimeError(
                    f"the record store's active student version `{seen.active}` cannot be served by this gateway "
                    f"({error}). Promote or roll back to a version it can serve (`kdgate student`), or point "
                    "`shadow.store_url` at this deployment's own store") from None
        self._task = asyncio.create_task(self._watch(), name="kdgate-students")
        if self.lora is not None and self.settings.student.kind == "http":
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="kdgate-student-replicas")

    async def aclose(self) -> None:
        for task in (self._task, self._reconciler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.slot is not None:
            await self.slot.aclose()
        for student in self._loaded.values():
            if not student.closed.is_set():
                await student._close()

    def acquire(self) -> Lease:
        return self.slot.acquire()

    def held(self, version: str | None) -> AbstractContextManager[Backend | None]:
        """The backend of a version while it serves, for work off the request path (`StudentSlot.held`)."""
        return self.slot.held(version)

    # ------------------------------------------------------------------------------------------------ following

    async def _watch(self) -> None:
        interval = self.settings.students.poll_interval_s
        outage = Outage(log, "following the student slot")  # logged when it starts and ends, not every poll
        while True:
            await asyncio.sleep(interval)
            try:
                moved = await asyncio.to_thread(self.versions.store.keep_file)  # its own connections follow it too
                if moved:
                    log.error("the record store file was %s; the student slot is read from it", moved)
                seen = await asyncio.to_thread(self.versions.slot)
                if seen.revision != self.revision and not self._changing.locked():
                    async with self._applying:
                        await self._apply(seen)
                await self._judge_canary()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a store hiccup must not stop following; the next poll tries again
                outage.failed(error, f"serving {self.slot.active.version if self.slot else 'nothing'} meanwhile, "
                                     f"trying again every {interval:g} s")
            else:
                outage.recovered()

    async def _reconcile_loop(self) -> None:
        interval = self.settings.students.reconcile_interval_s
        outage = Outage(log, "checking the student replicas' adapters")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_adapters()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a replica or store hiccup: the next round tries again
                outage.failed(error, f"trying again every {interval:g} s")
            else:
                outage.recovered()

    async def reconcile_adapters(self) -> list[tuple[str, str]]:
        """The serving versions' adapters onto every student replica that lacks them (vLLM keeps adapters in memory:
        a restarted replica comes back without them, a new one never had them). Not during a promotion or rollback,
        which loads and unloads on its own."""
        if self.slot is None or self._changing.locked():
            return []
        adapters = await self.serving_adapters()
        return await self.lora.reconcile(adapters) if adapters else []

    async def serving_adapters(self) -> dict[str, str]:
        """The adapter (name → path) of each serving LoRA version: what every student replica must list."""
        if self.slot is None or self.versions is None or self.lora is None:
            return {}
        adapters = {}
        for student in self.slot.serving():
            version = await asyncio.to_thread(self.versions.get, student.version)
            if version.kind == "lora":
                adapters[adapter_name(self.settings.student.model, version.name)] = version.adapter_path
        return adapters

    async def _apply(self, seen: Slot) -> None:
        """Serve what the slot row says (the caller holds `_applying`)."""
        if seen.revision == self.revision:
            return
        active = await self._load(seen.active)
        canary = await self._load(seen.canary) if seen.canary else None
        if self.slot is None:
            self.slot = StudentSlot(active)
        previous = {student.version for student in self.slot.serving()}
        self.slot.switch(active, canary, seen.canary_fraction)
        self.revision = seen.revision
        serving = {student.version for student in self.slot.serving()}
        for name in list(self._loaded):
            if name not in serving:
                student = self._loaded.pop(name)
                if student.version not in previous:  # loaded, never served (a prepared change that lost): close
                    retire(student)
        for name in list(self.figures):
            if name not in serving:
                del self.figures[name]
        for name in serving - previous:
            self.figures[name] = VersionFigures()
        if serving != previous:
            log.info("student slot revision %d: active %s%s", seen.revision, seen.active,
                     f", canary {seen.canary} at {seen.canary_fraction:.0%}" if seen.canary else "")
            for callback in self.on_switch:
                callback()
        self._serving_changed()

    async def _load(self, name: str) -> ServedStudent:
        if name in self._loaded and not self._loaded[name].retired:
            return self._loaded[name]
        version = await asyncio.to_thread(self.versions.get, name)
        student = await self.loader.load(version)
        self._loaded[name] = student
        return student

    def _serving_changed(self) -> None:
        self.metrics.student_serving_changed({student.version: role for student, role in self._roles()},
                                             self.revision)

    def _roles(self) -> list[tuple[ServedStudent, str]]:
        roles = [(self.slot.active, "active")]
        if self.slot.canary is not None:
            roles.append((self.slot.canary, "canary"))
        return roles

    # ------------------------------------------------------------------------------------------------ per request

    def record(self, lease: Lease, ok: bool, escalated: bool, ttft: float | None) -> None:
        figures = self.figures.setdefault(lease.version, VersionFigures())
        figures.requests += 1
        figures.errors += not ok
        figures.escalated += escalated
        if ttft is not None:
            figures.add_ttft(ttft)
        self.metrics.count_student_request(lease.version, ok, escalated, ttft)

    def record_divergence(self, version: str | None, kl: float) -> None:
        figures = self.figures.get(version) if version else None
        if figures is not None:
            figures.kl_sum += kl
            figures.kl_count += 1

    # ------------------------------------------------------------------------------------------------ changes

    async def promote(self, name: str, canary_fraction: float | None = None, automatic: bool = False) -> Slot:
        async with self._change():
            seen = await self._current()
            version = await self._version(name)
            self._check_policy(version)
            await self._prepare(version)
            try:
                moved = await asyncio.to_thread(self.versions.promote, name, seen, canary_fraction)
            except SlotChanged as error:
                raise Conflict(str(error)) from None
            except VersionError as error:
                raise InvalidRequest(str(error), parameter="name") from None
            await self._apply(moved)
            self.metrics.student_promotions.labels("canary" if canary_fraction else "full",
                                                   "automatic" if automatic else "manual").inc()
            await self._unload_stale_adapters()
            return moved

    async def rollback(self, reason: str = "rolled back by hand", automatic: bool = False) -> Slot:
        async with self._change():
            seen = await self._current()
            try:
                if seen.canary is None and seen.active is not None:
                    previous = (await self._version(seen.active)).previous
                    if previous is not None:
                        await self._prepare(await self._version(previous))
                moved = await asyncio.to_thread(self.versions.rollback, seen, reason)
            except SlotChanged as error:
                raise Conflict(str(error)) from None
            except VersionError as error:
                raise InvalidRequest(str(error)) from None
            await self._apply(moved)
            self.metrics.student_rollbacks.labels("automatic" if automatic else "manual").inc()
            log.warning("student rollback (%s): active %s", reason, moved.active)
            await self._unload_stale_adapters()  # the rolled-back version's adapter leaves the replicas
            return moved

    def _change(self):
        if self.versions is None:
            raise InvalidRequest("student versions need the record store (`shadow.store_url`) and "
                                 "`students.enabled`; this gateway serves its configured student only")
        if self._changing.locked():
            raise Conflict("another promotion or rollback is in progress in this gateway; wait for it and look at "
                           "`kdgate student status`")
        return _Both(self._changing, self._applying)

    async def _current(self) -> Slot:
        seen = await asyncio.to_thread(self.versions.slot)
        await self._apply(seen)  # act on the newest state before changing it
        return seen

    async def _version(self, name: str) -> StudentVersion:
        try:
            return await asyncio.to_thread(self.versions.get, name)
        except UnknownVersion as error:
            raise NotFound(str(error), parameter="name") from None

    def _check_policy(self, version: StudentVersion) -> None:
        """A threshold fitted to another student is never kept silently."""
        routing = self.settings.routing
        if routing.policy != "confidence" or version.policy_file or self.settings.students.keep_policy:
            return
        if routing.online.enabled:
            log.warning("version %s has no calibrated policy file: online recalibration starts a new window",
                        version.name)
            return
        raise InvalidRequest(f"version `{version.name}` has no routing policy calibrated for it, and the gateway's "
                             "`confidence` threshold was fitted to another student. Register it with a policy "
                             "file (`kdgate router calibrate` on this student), turn on online recalibration, or "
                             "set `students.keep_policy: true`", parameter="policy_file")

    async def _prepare(self, version: StudentVersion) -> None:
        """Make the version servable before the slot names it: its adapter on every student replica (vLLM), its
        weights loaded here. A failure leaves everything as it was."""
        if version.kind == "lora" and self.settings.student.kind == "http":
            try:
                await self.lora.load(adapter_name(self.settings.student.model, version.name), version.adapter_path)
            except AdapterRefused as error:
                raise UpstreamError(str(error), backend="student") from None
        try:
            await self._load(version.name)
        except (OSError, ValueError) as error:
            raise InvalidRequest(f"version `{version.name}` could not be loaded: {error}") from None

    async def _unload_stale_adapters(self) -> None:
        """Adapters of versions that serve nowhere and are not the rollback target leave the vLLM replicas."""
        if self.lora is None or self.settings.student.kind != "http":
            return
        keep = {student.version for student in self.slot.serving()}
        active = await asyncio.to_thread(self.versions.get, self.slot.active.version)
        keep.add(active.previous)
        for version in await asyncio.to_thread(self.versions.list):
            if version.kind == "lora" and version.name not in keep and version.state in ("retired", "rejected"):
                await self.lora.unload(adapter_name(self.settings.student.model, version.name))

    # ------------------------------------------------------------------------------------------------ canary

    async def _judge_canary(self) -> None:
        if self.slot is None or self.slot.canary is None:
            return
        canary = self.figures.get(self.slot.canary.version)
        active = self.figures.get(self.slot.active.version)
        if canary is None or active is None:
            return
        verdict = judge(canary, active, self.settings.students.canary)
        try:
            if verdict.action == "rollback":
                await self.rollback(f"automatic: canary {self.slot.canary.version} {verdict.reason}", automatic=True)
            elif verdict.action == "promote":
                await self.promote(self.slot.canary.version, automatic=True)
        except Conflict:
            pass  # another process or an admin call got there first

    def status(self) -> dict:
        serving = {student.version: role for student, role in self._roles()} if self.slot else {}
        return {"revision": self.revision, "active": self.slot.active.version if self.slot else None,
                "canary": self.slot.canary.version if self.slot and self.slot.canary else None,
                "canary_fraction": self.slot.canary_fraction if self.slot else 0.0,
                "this_process": {name: {"role": role} | (self.figures[name].public() if name in self.figures else {})
                                 for name, role in serving.items()},
                "canary_judgment": self._canary_judgment()}

    def _canary_judgment(self) -> dict | None:
        if self.slot is None or self.slot.canary is None:
            return None
        return judgment(self.figures.get(self.slot.canary.version), self.figures.get(self.slot.active.version),
                        self.settings.students.canary)


class _Both:
    """Two locks taken in order (an admin change also blocks the slot follower)."""

    def __init__(self, first: asyncio.Lock, second: asyncio.Lock):
        self.locks = (first, second)

    async def __aenter__(self) -> None:
        for lock in self.locks:
            await lock.acquire()

    async def __aexit__(self, *exc) -> None:
        for lock in reversed(self.locks):
            lock.release()
