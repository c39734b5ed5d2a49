"""A store as an older kdgate left it: migrated only to a given revision, holding the rows that version wrote."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine

from runtime.store.records import MIGRATIONS


@contextmanager
def store_at(url: str, revision: str) -> Iterator[Connection]:
    """An empty store (SQLite file or PostgreSQL) migrated to `revision` only; the connection writes what that
    version would have, committed when the block ends, before the test opens it with today's `ShadowStore`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            yield connection
    finally:
        engine.dispose()
