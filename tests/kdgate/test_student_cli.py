"""`kdgate student` against a running gateway: register, promote as a canary, list, roll back; a refusal is the
gateway's message and exit 1; an unreachable gateway says how to start one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gateway.app import create_app
from kdgate.cli import app
from tests.conftest import ThreadedServer, free_port
from tests.gateway.students.test_promotion import settings_with_store

runner = CliRunner()


@pytest.fixture
def gateway_url(demo_dirs, engine_server, tmp_path):
    with ThreadedServer(create_app(settings_with_store(demo_dirs, engine_server, tmp_path / "s.sqlite3"))) as server:
        yield server.url


def student(url: str, *args: str):
    return runner.invoke(app, ["student", *args, "--url", url])


def test_register_canary_list_and_roll_back(gateway_url, demo_dirs):
    registered = student(gateway_url, "register", "v2", "--model", str(demo_dirs[1]), "--notes", "the teacher")
    assert registered.exit_code == 0 and "registered v2 (model) as a candidate" in registered.output
    promoted = student(gateway_url, "promote", "v2", "--canary", "0.25")
    assert promoted.exit_code == 0 and "canary v2 at 25%" in promoted.output
    listed = student(gateway_url, "list")
    assert listed.exit_code == 0 and "canary" in listed.output and "candidate" not in listed.output
    rolled = student(gateway_url, "rollback", "--reason", "not now")
    assert rolled.exit_code == 0 and "active initial" in rolled.output and "canary" not in rolled.output


def test_a_refusal_is_the_gateways_message(gateway_url):
    refused = student(gateway_url, "promote", "nope")
    assert refused.exit_code == 1 and "(404)" in refused.output and "no student version `nope`" in refused.output


def test_a_gateway_that_is_not_there_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    result = student(url, "status")
    assert result.exit_code == 1 and f"cannot reach the gateway at {url}" in result.output
