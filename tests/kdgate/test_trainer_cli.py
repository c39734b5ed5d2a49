"""`kdgate trainer` against a real trainer service: the jobs table keeps every job's reason whole at 80 columns."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill.online.app import create_trainer_app
from kdgate.cli import app
from tests.conftest import ThreadedServer
from tests.distill.online.test_service import ADMIN_KEY, ALERTS_KEY, call, seed_records, trainer_config, wait_job, \
    webhook

runner = CliRunner()


@pytest.fixture
def skipped_job(tmp_path, demo_dirs):
    """A trainer whose one job ran and was skipped for too few records (a long reason, with the number needed)."""
    settings, path = trainer_config(tmp_path)
    seed_records(settings, demo_dirs, count=0)
    with ThreadedServer(create_trainer_app(settings, path)) as server:
        job_id = call(server, "POST", "/v1/alerts", ALERTS_KEY, json=webhook()).json()["queued"][0]
        yield server, wait_job(server, job_id, ("skipped",))


def test_jobs_shows_a_jobs_reason_whole_at_80_columns(skipped_job):
    server, job = skipped_job
    assert job["reason"].endswith("10 needed (`dataset.min_records`)")
    shown = runner.invoke(app, ["trainer", "jobs", "--url", server.url, "--token", ADMIN_KEY], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80, shown.output
    assert " ".join(job["reason"].split()) in " ".join(shown.output.split()), shown.output
