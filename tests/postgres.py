"""A real PostgreSQL server for the store tests (registered as a plugin in tests/conftest.py): Debian's package, a throwaway cluster on loopback.

Skipped, with the reason, only when the binaries are missing or the server cannot start (`.ci/run` installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.threaded import free_port


def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    return found


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; in a root CI container run it as the package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    initdb, postgres = _bin("initdb"), _bin("postgres")
    if not initdb or not postgres:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    root = Path(tempfile.mkdtemp(prefix="kdgate-postgres-"))  # not under pytest's tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    done = subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "kdgate", "--auth=trust", "-E", "UTF8"]),
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"initdb failed: {done.stderr.strip()[-300:]}")
    server = subprocess.Popen(_as_postgres([postgres, "-D", str(data), "-p", str(port), "-k", str(root),
                                            "-h", "127.0.0.1"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=kdgate dbname=postgres", autocommit=True) as db:
                db.execute("CREATE DATABASE shadow")
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.skip(f"PostgreSQL did not start: {server.stderr.read().decode()[-300:]}")
            time.sleep(0.2)
    yield f"postgresql+psycopg://kdgate@127.0.0.1:{port}/shadow"
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
