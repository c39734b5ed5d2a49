"""Runs re-distillation jobs one at a time, each in a process of its own, so that a crash cannot take the service
down and a cancel or a time-out can stop it.

Local: `kdgate trainer run-job <id>` as a subprocess of the service (its own process group; its output in
`<work_dir>/job-<id>/job.log`). The job process writes its own steps and figures to the store; the runner starts it,
watches it, stops it when asked or when it runs past `job_timeout_s`, and fails it with its log's tail when it dies
without ending itself. The Kubernetes runner submits the same entrypoint as a Kubeflow TrainJob
(`distill.online.kubernetes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distill.online.settings import TrainerSettings
from runtime.store.train_jobs import TrainJobs

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


@dataclass
class Running:
    job_id: int
    process: subprocess.Popen
    started: float
    log_path: Path
    stop_reason: tuple[str, str] | None = None  # (end state, reason) the runner decided
    stop_at: float = 0.0  # when it was asked to stop (SIGTERM); SIGKILL after STOP_GRACE_S

    def stop(self, state: str, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stop_at = (state, reason), time.monotonic()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


class LocalRunner:
    def __init__(self, settings: TrainerSettings, jobs: TrainJobs, config_file: Path | None = None):
        self.settings = settings
        self.jobs = jobs
        self.config_file = config_file
        self.running: Running | None = None

    async def tick(self) -> None:
        """Watch the running job, or start the next queued one."""
        if self.running is not None:
            await self._watch(self.running)
            return
        job = await asyncio.to_thread(self.jobs.active)
        if job is None or job.state != "queued":
            return
        self.running = await asyncio.to_thread(self._start, job.id)

    async def cancel(self, job_id: int) -> bool:
        """Stop a job: a queued one ends at once, a running one when its process has stopped."""
        if self.running is not None and self.running.job_id == job_id:
            self.running.stop("cancelled", "cancelled by request")
            return True
        return await asyncio.to_thread(self.jobs.finish, job_id, "cancelled", "cancelled by request")

    async def aclose(self) -> None:
        """The service is stopping (SIGTERM: a rollout, a drain): a running job stops too, and is queued again for
        the next trainer with `requeue_on_restart`, else failed with that reason (never left running)."""
        if self.running is not None:
            state = "queued" if self.settings.requeue_on_restart else "failed"
            self.running.stop(state, "the trainer service stopped during the job" + (
                "; queued again" if state == "queued" else ""))
            await asyncio.to_thread(self._wait, self.running)
            await self._ended(self.running)

    def _start(self, job_id: int) -> Running:
        folder = job_folder(self.settings, job_id)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "job.log"
        command = [sys.executable, "-m", "kdgate.cli", "trainer", "run-job", str(job_id)]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        output = log_path.open("ab")
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=os.environ | {"PYTHONUNBUFFERED": "1"})
        output.close()
        if not self.jobs.start(job_id, runner_ref=f"pid:{process.pid}"):  # cancelled between the look and now
            self._signal_process(process, signal.SIGKILL)
        log.info("job %d started (pid %d), log %s", job_id, process.pid, log_path)
        return Running(job_id, process, time.monotonic(), log_path)

    async def _watch(self, running: Running) -> None:
        if running.process.poll() is None:
            now = time.monotonic()
            if running.stop_reason is None and now - running.started > self.settings.job_timeout_s:
                running.stop("failed", f"timed out after {self.settings.job_timeout_s:g} s")
            elif running.stop_reason is not None and now - running.stop_at > STOP_GRACE_S:
                self._signal_process(running.process, signal.SIGKILL)
            return
        await self._ended(running)

    async def _ended(self, running: Running) -> None:
        self.running = None
        tail = read_tail(running.log_path)
        code = running.process.returncode
        if running.stop_reason is not None:
            state, reason = running.stop_reason
            if state == "queued":
                await asyncio.to_thread(self.jobs.requeue, running.job_id, reason)
            else:
                await asyncio.to_thread(self.jobs.finish, running.job_id, state, reason, None, tail)
        elif await asyncio.to_thread(self.jobs.finish, running.job_id, "failed",
                                     f"the job process exited with code {code} before ending the job", None, tail):
            log.error("job %d died (exit code %s); its log ends:\n%s", running.job_id, code, tail[-1500:])

    @staticmethod
    def _signal_process(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)  # the job and whatever it started
        except ProcessLookupError:
            pass

    @staticmethod
    def _wait(running: Running) -> None:
        try:
            running.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            LocalRunner._signal_process(running.process, signal.SIGKILL)
            running.process.wait()


def job_folder(settings: TrainerSettings, job_id: int) -> Path:
    return Path(settings.work_dir) / f"job-{job_id}"


def read_tail(path: Path, chars: int = 4000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def stop_orphan(runner_ref: str | None) -> None:
    """A job process a dead trainer left behind (after SIGKILL the group may live on): stopped before the job is
    marked, so that it cannot finish a job that was failed or re-queued."""
    if not runner_ref or not runner_ref.startswith("pid:"):
        return
    pid = int(runner_ref[4:])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"run-job" in cmdline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
