"""`kdgate student` against a running gateway: register, promote as a canary, list, roll back; a refusal is the
gateway's message and exit 1; an unreachable gateway says how to start one."""

from __future__ import annotations

import httpx
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
    return runner.invoke(app, ["student", *args, "--url", url], env={"COLUMNS": "80"})


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


def test_list_and_status_fit_80_columns_with_paths_whole_and_the_canary_rules(gateway_url, demo_dirs):
    """`list` cut paths to 10 characters; `status` printed `None` for figures not measured yet and had no p99 TTFT,
    the figure the canary is judged on."""
    notes = "distilled again from the records of the week after the launch, gate passed on every slice"
    student(gateway_url, "register", "v2", "--model", str(demo_dirs[1]), "--notes", notes)
    student(gateway_url, "promote", "v2", "--canary", "0.5")
    listed = student(gateway_url, "list")
    assert listed.exit_code == 0, listed.output
    lines = fits_80_columns(listed.output)
    assert all(any(str(path) in line for line in lines) for path in demo_dirs), listed.output  # whole, one line
    assert " ".join(notes.split()) in " ".join(listed.output.split())
    assert "None" not in listed.output and "—" in listed.output  # no figure measured yet
    for _ in range(4):
        httpx.post(f"{gateway_url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "My order 48213 has not arrived."}], "max_tokens": 2})
    shown = student(gateway_url, "status")
    assert shown.exit_code == 0, shown.output
    fits_80_columns(shown.output)
    figures = httpx.get(f"{gateway_url}/admin/v1/students/status", timeout=30).json()["this_process"]
    measured = [row["p99_ttft_ms"] for row in figures.values() if row.get("p99_ttft_ms") is not None]
    assert "p99" in shown.output and measured and all(f"{value:.1f}" in shown.output for value in measured)
    assert "× 2 + 50 ms" in shown.output and "once it has served 50 requests" in shown.output
    assert "verdict wait: " in " ".join(shown.output.split()) and "None" not in shown.output


def fits_80_columns(output: str) -> list[str]:
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 80, output
    return lines
