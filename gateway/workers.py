"""Several gateway worker processes behind one port (uvicorn workers), with `/metrics` that stays correct.

Each worker is its own process: its own backends and connection pool, routing state (online recalibration, the
teacher-share window) and shadow worker. prometheus-client's multiprocess mode makes a scrape of any worker report
all of them: every process writes its samples to memory-mapped files in one folder (`PROMETHEUS_MULTIPROC_DIR`),
and `/metrics` reads the whole folder. Counters and histograms add up across workers; each gauge declares how
(`multiprocess_mode` in `gateway.metrics`: in-flight requests sum over live workers, the threshold and rolling
shares are the most recently written worker's).

The parent (`kdgate serve --workers N`) prepares before any worker starts: it refuses local backends (every worker
would load its own copy of the models), empties the metrics folder, and runs the shadow store's migrations once so
that N workers do not race to create the same tables.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The metrics folder when this process runs in prometheus-client's multiprocess mode, else None."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def prepare_workers(settings: GatewaySettings, workers: int) -> Path:
    """In the parent, before uvicorn spawns `workers` processes: check, set up the metrics folder, migrate."""
    local = [role for role in ("student", "teacher")
             if getattr(settings, role) is not None and getattr(settings, role).kind == "local"]
    if local:
        raise ValueError(f"`workers`={workers} needs http backends, but {' and '.join(local)} "
                         f"{'is' if len(local) == 1 else 'are'} local: every worker would load its own copy of the "
                         "model. Serve the models with `kdgate engine` (or vLLM) and point the gateway at them, "
                         "or run one worker")
    folder = multiprocess_dir() or Path(tempfile.mkdtemp(prefix="kdgate-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # samples of an earlier run would be added to this one's
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)  # the spawned workers inherit it and import prometheus-client with it
    if settings.shadow.enabled and settings.shadow.store_url and settings.teacher is not None:
        _migrate_once(settings.shadow.store_url)
    return folder


def _migrate_once(store_url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.store.records import ShadowStore

    try:
        ShadowStore(store_url).close()  # opening runs the Alembic migrations to head
    except (SQLAlchemyError, OSError) as error:  # each worker then reports the store down and serves anyway
        log.error("shadow store cannot be opened before starting the workers: %s", error)


def reap_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that died without cleaning up (killed; uvicorn restarts a new one)."""
    from prometheus_client import multiprocess

    for pid in {int(match.group(1)) for path in folder.glob("gauge_live*.db")
                if (match := _LIVE_GAUGE_FILE.search(path.name))}:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_exited(folder: Path) -> None:
    """A worker's own clean exit: its live gauges (requests in flight, queue depth) stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid(), str(folder))


def scrape_registry(folder: Path):
    """A registry that reads every worker's samples from the folder (built per scrape, as the client advises)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return registry
