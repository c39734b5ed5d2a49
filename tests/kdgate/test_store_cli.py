"""`kdgate store migrate` on a real SQLite file and a real PostgreSQL: a store from an older migration is brought to
the newest, a current one is left as it is, and an unreachable database exits 1 without its password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from runtime.store.records import MIGRATIONS
from tests.conftest import ROOT


def kdgate(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    return subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, check=False, capture_output=True,
                          text=True, timeout=60, env=clean | env)


def migrations() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if "alembic_version" not in inspect(connection).get_table_names():
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    return request.getfixturevalue("fresh_postgres_url")


def test_migrate_brings_an_older_store_to_the_newest_revision_once(store_url):
    scripts = ScriptDirectory.from_config(migrations())
    newest = scripts.get_current_head()
    older = scripts.get_revision(newest).down_revision
    engine = create_engine(store_url)
    with engine.begin() as connection:
        config = migrations()
        config.attributes["connection"] = connection
        command.upgrade(config, older)
    engine.dispose()
    assert revision_of(store_url) == older

    done = kdgate("store", "migrate", KDGATE_SHADOW__STORE_URL=store_url)  # the variable the chart's Job sets
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"store at revision {newest} (the newest)\n"
    assert revision_of(store_url) == newest
    again = kdgate("store", "migrate", "--store-url", store_url)
    assert (again.returncode, again.stdout) == (0, done.stdout)


def test_an_unreachable_store_exits_1_naming_it_without_its_password():
    done = kdgate("store", "migrate", "--store-url", "postgresql+psycopg://kdgate:s3cret@127.0.0.1:1/kdgate")
    assert done.returncode == 1
    assert "cannot migrate the store at postgresql+psycopg://kdgate:***@127.0.0.1:1/kdgate" in done.stderr
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr
