"""Several gateways (and a trainer) starting at once on an empty PostgreSQL store, as a first `helm install` or a
rollout starts them: each brings the schema to the newest migration, and none fails because another one is doing
the same (they raced on creating the tables and on `alembic_version`)."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import create_engine, text

STARTS = 6
START = """
import sys
from runtime.store.records import ShadowStore
ShadowStore(sys.argv[1]).engine.dispose()
"""


def test_stores_opened_at_once_on_an_empty_database_all_start(fresh_postgres_url):
    processes = [subprocess.Popen([sys.executable, "-c", START, fresh_postgres_url], stderr=subprocess.PIPE,
                                  text=True) for _ in range(STARTS)]
    failures = [error for process in processes if (error := process.communicate(timeout=120)[1]) and
                process.returncode != 0]
    assert failures == [], failures[0][-2000:]
    engine = create_engine(fresh_postgres_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert len(versions) == 1  # one schema, at one revision
