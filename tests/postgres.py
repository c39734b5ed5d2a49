"""A real PostgreSQL server for the store tests (registered as a plugin in tests/conftest.py): Debian's package, a throwaway cluster on loopback.

A missing binary or a server that will not start fails under CI and skips elsewhere, naming what to install
(tests/needs.py); `fresh_database` gives a test a database of its own on the session's cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.threaded import free_port
from tests import needs

INSTALL = "apt-get install postgresql (.ci/run installs it)"


def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    return found


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; in a root CI container run it as the package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresCluster:
    """A throwaway cluster on loopback (trust authentication, user `kdgate`, a `shadow` database) that a test can
    stop and start again on the same port and data, as an outage and a restart."""

    def __init__(self):
        self.initdb, self.postgres = _bin("initdb"), _bin("postgres")
        if not self.initdb or not self.postgres:
            needs.missing("PostgreSQL's initdb and postgres", INSTALL)
        self.root = Path(tempfile.mkdtemp(prefix="kdgate-postgres-"))  # not under pytest's tmp: postgres must reach it
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data, self.port, self.server = self.root / "data", free_port(), None
        done = subprocess.run(_as_postgres([self.initdb, "-D", str(self.data), "-U", "kdgate", "--auth=trust", "-E",
                                            "UTF8"]), capture_output=True, text=True)
        if done.returncode:
            needs.missing(f"a working initdb (it failed: {done.stderr.strip()[-300:]})", INSTALL)
        self.start()
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as db:
            db.execute("CREATE DATABASE shadow")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://kdgate@127.0.0.1:{self.port}/shadow"

    def conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=kdgate dbname={database}"

    def start(self) -> None:
        import psycopg

        log = (self.root / "server.log").open("a")  # a file, not a pipe nobody reads: a full pipe stops the server
        self.server = subprocess.Popen(_as_postgres([self.postgres, "-D", str(self.data), "-p", str(self.port), "-k",
                                                     str(self.root), "-h", "127.0.0.1"]),
                                       stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    self.server.kill()
                    tail = (self.root / "server.log").read_text()[-300:]
                    needs.missing(f"a PostgreSQL that starts ({tail})", INSTALL)
                time.sleep(0.2)

    def stop(self) -> None:
        self.server.terminate()  # a smart shutdown would wait for clients: SIGTERM is PostgreSQL's "fast" one
        self.server.wait(timeout=30)

    def remove(self) -> None:
        if self.server.poll() is None:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    cluster = PostgresCluster()
    yield cluster.url
    cluster.remove()


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, to stop and start."""
    cluster = PostgresCluster()
    yield cluster
    cluster.remove()


@pytest.fixture
def fresh_postgres_url(postgres_url) -> Iterator[str]:
    """A database of its own on the session's cluster, dropped afterwards: a test starts from an empty store."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The same test on a SQLite file and on PostgreSQL (the store Helm and compose deploy), each empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    return request.getfixturevalue("fresh_postgres_url")
