"""No secret appears in any banner, status page, config dump, log line or error body: `kdgate serve` started with a
marker password in the store URL (PostgreSQL) and in the teacher's URL, and a marker backend key; then every place
that shows settings or an upstream address is read and grepped for the markers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port, stop, wait_until_up

MARKER = "MARKERPW7781"
ADMIN = "kdg-admin-for-the-secrets-test"


@pytest.fixture(scope="module")
def environment(postgres_url) -> dict[str, str]:
    scheme, rest = postgres_url.split("://", 1)
    user, host = rest.split("@", 1)  # trust authentication: the password is sent and not needed
    dead = free_port()  # nothing listens: the teacher is down, so a forced teacher request is an error body
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    return env | {
        "KDGATE_STUDENT__THREADS": "1", "PYTHONUNBUFFERED": "1", "KDGATE_LOG_LEVEL": "debug",
        "KDGATE_SHADOW__STORE_URL": f"{scheme}://{user}:{MARKER}@{host}",
        "KDGATE_TEACHER__KIND": "http", "KDGATE_TEACHER__MODEL": "teacher",
        "KDGATE_TEACHER__BASE_URL": f"http://ops:{MARKER}@127.0.0.1:{dead}/v1?api_key={MARKER}",
        "KDGATE_TEACHER__API_KEY": f"sk-{MARKER}",
        "KDGATE_AUTH__ADMIN_SHA256": hashlib.sha256(ADMIN.encode()).hexdigest(),
        "KDGATE_RESILIENCE__HEALTH_INTERVAL_S": "1",
    }


@pytest.fixture(scope="module")
def shown(environment, tmp_path_factory) -> dict[str, str]:
    """Every text the gateway showed, by where it showed it."""
    workdir = tmp_path_factory.mktemp("secrets")
    port = free_port()
    log_path = workdir / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=workdir,
                                   env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    texts = {}
    try:
        wait_until_up(f"{url}/healthz", process, timeout=120)
        admin = {"authorization": f"Bearer {ADMIN}"}
        texts["/admin/status"] = httpx.get(f"{url}/admin/status", headers=admin, timeout=30).text
        body = {"model": "kdgate-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        forced = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                            headers=admin | {"x-kdgate-force": "teacher"})
        assert forced.status_code in (502, 503), forced.text  # the teacher is down: an error body to read
        texts["error body"] = forced.text
        streamed = httpx.post(f"{url}/v1/chat/completions", json=body | {"stream": True}, timeout=60,
                              headers=admin | {"x-kdgate-force": "teacher"})
        texts["error event"] = streamed.text
        texts["/readyz"] = httpx.get(f"{url}/readyz", timeout=30).text
        texts["/metrics"] = httpx.get(f"{url}/metrics", headers=admin, timeout=30).text
    finally:
        stop(process)
    texts["banner and log"] = log_path.read_text()
    shown_config = subprocess.run([sys.executable, "-m", "kdgate.cli", "config", "show"], cwd=workdir,
                                  env=environment, capture_output=True, text=True, timeout=120)
    assert shown_config.returncode == 0, shown_config.stderr
    texts["kdgate config show"] = shown_config.stdout + shown_config.stderr
    return texts


def test_the_places_were_read(shown):
    """The grep below reads real text: the banner names the store and the teacher, the status page its backends,
    the error says the teacher is down, the config dump holds the store URL."""
    assert "store" in shown["banner and log"] and "127.0.0.1" in shown["banner and log"]
    assert json.loads(shown["/admin/status"])["backends"]["teacher"]["kind"] == "http"
    assert "teacher" in json.loads(shown["error body"])["error"]["message"]
    assert "store_url: postgresql+psycopg://" in shown["kdgate config show"]


@pytest.mark.parametrize("where", ["banner and log", "/admin/status", "error body", "error event", "/readyz",
                                   "/metrics", "kdgate config show"])
def test_no_marker_password_is_shown(shown, where):
    assert MARKER not in shown[where], shown[where][max(0, shown[where].find(MARKER) - 300):][:600]
