"""A LoRA student version promoted through real `kdgate engine --enable-lora` servers (vLLM's runtime LoRA API):
loaded on every replica before the switch, served under `<student>@<version>`, under load with no failed request;
and when one replica refuses the adapter, nothing is switched and nothing stays loaded anywhere."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from gateway.app import create_app
from gateway.settings import BackendSettings, HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from tests.conftest import ROOT, ThreadedServer, gateway_settings, start_engine_server, stop
from tests.gateway.students.test_promotion import PROMPTS, admin, answers, switch_under_load

RUNTIME_LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


@pytest.fixture(scope="module")
def replicas(demo_dirs):
    servers = [start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA)
               for _ in range(2)]
    yield servers
    for server in servers:
        stop(server.process)


def lora_gateway(demo_dirs, engine_server, tmp_path, replica_urls: list[str], reconcile_interval_s: float = 5.0):
    student = BackendSettings(kind="http", base_url=replica_urls[0], model="demo-student", replica_urls=replica_urls)
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=False)),
                                shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{tmp_path / 's.sqlite3'}"),
                                students=StudentsSettings(enabled=True, poll_interval_s=0.2,
                                                          reconcile_interval_s=reconcile_interval_s))
    return ThreadedServer(create_app(settings.model_copy(update={"student": student})))


def listed(url: str) -> set[str]:
    return {card["id"] for card in httpx.get(f"{url}/models", timeout=10).json()["data"]}


@contextmanager
def watching_listings(urls: list[str], model: str) -> Iterator[list[tuple[float, str, bool]]]:
    """Poll every replica's /models while the block runs: (monotonic time the poll began, url, `model` listed)."""
    polls, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for url in urls:
                began = time.monotonic()
                polls.append((began, url, model in listed(url)))
            time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield polls
    finally:
        stop.set()
        thread.join(30)


def check_listed_before_served(polls: list[tuple[float, str, bool]], urls: list[str], first_served: float) -> None:
    """The adapter was on every replica before the first answer of its version: no poll that began after that
    answer's headers arrived found it missing anywhere, and each replica was polled after it (not vacuous)."""
    assert all(any(began > first_served and url == polled for began, polled, _ in polls) for url in urls), \
        "no replica was polled after the first answer of the new version"
    late = [(began - first_served, url) for began, url, found in polls if began > first_served and not found]
    assert late == [], f"the new version answered before its adapter was on every replica: {late[:3]}"


def test_an_adapter_goes_onto_every_replica_then_serves_without_a_failed_request(demo_dirs, engine_server, replicas,
                                                                                  demo_adapter, tmp_path):
    urls = [server.base_url for server in replicas]
    with lora_gateway(demo_dirs, engine_server, tmp_path, urls) as gateway:
        expected = {"initial": answers(gateway)}
        assert admin(gateway, "POST", "", {"name": "v2", "adapter_path": str(demo_adapter)}).status_code == 201
        with watching_listings(urls, "demo-student@v2") as polls:
            seen, failures = switch_under_load(gateway, [(lambda: admin(gateway, "POST", "/v2/promote"), "v2")])
        expected["v2"] = answers(gateway)
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4})
    assert failures == [] and {version for _, _, version, _ in seen} == {"initial", "v2"}
    assert any(not found for _, _, found in polls)  # the watch began before the adapter was loaded
    check_listed_before_served(polls, urls, min(at for _, _, version, at in seen if version == "v2"))
    assert expected["v2"] != expected["initial"]
    assert [row for row in seen if expected[row[2]][row[0]] != row[1]] == []
    assert reply.json()["kdgate"]["model"] == "demo-student@v2"


def test_the_listed_before_served_check_fails_when_a_replica_loads_after_the_switch():
    """The ordering check can fail: a replica still without the adapter when a poll began after the first answer of
    the new version (a promotion that switched first and loaded later), or no poll after that answer at all."""
    urls = ["http://a/v1", "http://b/v1"]
    in_order = [(1.0, urls[0], False), (1.0, urls[1], False), (2.0, urls[0], True), (2.0, urls[1], True),
                (4.0, urls[0], True), (4.0, urls[1], True)]
    check_listed_before_served(in_order, urls, first_served=3.0)
    loaded_late = in_order[:3] + [(4.0, urls[1], False), (5.0, urls[1], True)]
    with pytest.raises(AssertionError):
        check_listed_before_served(loaded_late, urls, first_served=3.0)
    with pytest.raises(AssertionError):
        check_listed_before_served(in_order[:4], urls, first_served=3.0)


def test_a_replica_that_refuses_leaves_everything_as_it_was(demo_dirs, engine_server, replicas, demo_adapter,
                                                          tmp_path):
    """The second replica has no runtime LoRA (a vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING): the
    promotion fails naming it, the first replica's copy is unloaded, and the old version keeps serving."""
    refuser = start_engine_server(demo_dirs[0], "demo-student")
    try:
        urls = [replicas[0].base_url, refuser.base_url]
        with lora_gateway(demo_dirs, engine_server, tmp_path, urls) as gateway:
            before = answers(gateway)  # the initial version's greedy answers, before anything was tried
            assert admin(gateway, "POST", "", {"name": "v3", "adapter_path": str(demo_adapter)}).status_code == 201
            refused = admin(gateway, "POST", "/v3/promote")
            status = admin(gateway, "GET", "/status").json()
            version = admin(gateway, "GET", "/v3").json()
            served = answers(gateway)
            status_after = admin(gateway, "GET", "/status").json()
    finally:
        stop(refuser.process)
    assert refused.status_code == 502
    assert refuser.base_url in refused.json()["error"]["message"] and "HTTP 404" in refused.json()["error"]["message"]
    assert "demo-student@v3" not in listed(replicas[0].base_url)
    assert status["active"] == "initial" and status["revision"] == 1 and version["state"] == "candidate"
    assert served == before  # the old version answers as before
    assert status_after["active"] == "initial" and status_after["revision"] == 1


def test_the_documented_flow_canary_full_rollback_and_again(demo_dirs, engine_server, replicas, demo_adapter,
                                                             tmp_path):
    """docs/student-versions.md's flow through vLLM's runtime-LoRA API: promoting a canary to full and rolling back
    to a version whose adapter was kept both loaded an adapter that was already loaded, which vLLM (and the engine)
    refuse with 400 "has already been loaded": a 502 at the flow's fourth line. A rolled-back version's adapter
    stayed loaded, so promoting it again failed the same way. Now: nothing listed is loaded again, and what was
    rolled back leaves the replicas."""
    urls = [server.base_url for server in replicas]

    def on_replicas(version: str) -> list[bool]:
        return [f"demo-student@{version}" in listed(url) for url in urls]

    with lora_gateway(demo_dirs, engine_server, tmp_path, urls) as gateway:
        for name in ("v4", "v5"):
            assert admin(gateway, "POST", "", {"name": name, "adapter_path": str(demo_adapter)}).status_code == 201
        steps = [("canary v4", admin(gateway, "POST", "/v4/promote", {"canary_fraction": 0.5})),
                 ("full v4", admin(gateway, "POST", "/v4/promote")),
                 ("full v5", admin(gateway, "POST", "/v5/promote"))]
        kept = on_replicas("v4")  # v5's rollback target keeps its adapter
        steps.append(("rollback to v4", admin(gateway, "POST", "/rollback")))
        after_rollback = {"v4": on_replicas("v4"), "v5": on_replicas("v5")}
        steps.append(("canary v5 again", admin(gateway, "POST", "/v5/promote", {"canary_fraction": 0.5})))
        steps.append(("canary rolled back", admin(gateway, "POST", "/rollback")))
        after_canary = on_replicas("v5")
        status = admin(gateway, "GET", "/status").json()
    assert [(step, reply.status_code) for step, reply in steps] == [(step, 200) for step, _ in steps], \
        [reply.text for _, reply in steps if reply.status_code != 200]
    assert kept == [True, True]
    assert after_rollback == {"v4": [True, True], "v5": [False, False]}
    assert after_canary == [False, False]
    assert status["active"] == "v4" and status["canary"] is None


def test_a_replica_that_restarts_gets_the_adapter_back_and_no_request_fails(demo_dirs, engine_server, demo_adapter,
                                                                            tmp_path):
    """vLLM keeps runtime adapters in memory: a student replica that restarts comes back ready on /health without
    the active version's adapter and answers 404 for `<student>@<version>`, which the gateway passed to the client.
    Now the gateway reconciles every `students.reconcile_interval_s` (the adapter is back within it), and until
    then serves those requests from the teacher: under streaming load across the restart, no request fails."""
    servers = [start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA) for _ in range(2)]
    urls = [server.base_url for server in servers]
    port = int(urls[0].rsplit(":", 1)[1].split("/")[0])
    try:
        student = BackendSettings(kind="http", base_url=urls[0], model="demo-student", replica_urls=urls)
        settings = gateway_settings(
            demo_dirs, engine_server, routing=RoutingSettings(policy="student_only",
                                                              handoff=HandoffSettings(enabled=False)),
            shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{tmp_path / 's.sqlite3'}"),
            students=StudentsSettings(enabled=True, poll_interval_s=0.2, reconcile_interval_s=0.5))
        with ThreadedServer(create_app(settings.model_copy(update={"student": student}))) as gateway:
            assert admin(gateway, "POST", "", {"name": "v6", "adapter_path": str(demo_adapter)}).status_code == 201
            assert admin(gateway, "POST", "/v6/promote").status_code == 200

            def restart() -> None:
                stop(servers[0].process)
                servers[0] = start_engine_server(demo_dirs[0], "demo-student", "--enable-lora", env=RUNTIME_LORA,
                                                 port=port)

            seen, failures = switch_under_load(gateway, [(restart, None)])
            back = time.monotonic()
            while "demo-student@v6" not in listed(urls[0]) and time.monotonic() - back < 10:
                time.sleep(0.1)
            listed_after = time.monotonic() - back
            served = None
            while served != "demo-student@v6" and time.monotonic() - back < 60:  # once the breaker lets it back in
                reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
                                   json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4})
                served = reply.json()["kdgate"]["model"]
                time.sleep(0.2)
    finally:
        for server in servers:
            stop(server.process)
    assert failures == []
    assert listed_after < 5  # the restarted replica has the active version's adapter again
    assert served == "demo-student@v6" and reply.json()["kdgate"]["route"] == "student"


def test_a_replica_without_the_adapter_is_served_around_not_passed_to_the_client(demo_dirs, engine_server, replicas,
                                                                                 demo_adapter, tmp_path):
    """Between a replica's restart and the next reconciliation, the replica answers 404 for `<student>@<version>`;
    the gateway named that model, not the client, so the client gets the teacher's answer (`student_error`), never
    the 404. (The adapter is taken off by hand here, with reconciliation slowed, so that the window stays open.)"""
    urls = [server.base_url for server in replicas]
    with lora_gateway(demo_dirs, engine_server, tmp_path, urls, reconcile_interval_s=300) as gateway:
        assert admin(gateway, "POST", "", {"name": "v7", "adapter_path": str(demo_adapter)}).status_code == 201
        assert admin(gateway, "POST", "/v7/promote").status_code == 200
        assert httpx.post(f"{urls[0]}/unload_lora_adapter", json={"lora_name": "demo-student@v7"},
                          timeout=30).status_code == 200
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4})
        streamed = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 4, "stream": True})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["kdgate"]["route"], reply.json()["kdgate"]["reason"]) == ("teacher", "student_error")
    assert streamed.status_code == 200 and '"error"' not in streamed.text and streamed.text.endswith("[DONE]\n\n")


PROBE = ROOT / "helm" / "kdgate" / "files" / "student_ready.py"


def probe(replica: str, gateway: str) -> subprocess.CompletedProcess:
    """The chart's student readiness probe, run as the kubelet runs it (exec, its exit code decides)."""
    return subprocess.run([sys.executable, str(PROBE), replica.removesuffix("/v1"), gateway], capture_output=True,
                          text=True, timeout=30)


def test_a_replica_is_ready_only_once_it_lists_the_serving_adapters(demo_dirs, engine_server, replicas,
                                                                    demo_adapter, tmp_path, monkeypatch):
    """The chart's readiness probe on a LoRA student: /health, then every adapter the gateway's /readyz/adapters
    names must be in the replica's /v1/models (a restarted replica is healthy long before the gateway has loaded
    them). Without a gateway to ask it falls back to /health (a first install's gateway waits for the student)."""
    urls = [server.base_url for server in replicas]
    with lora_gateway(demo_dirs, engine_server, tmp_path, urls, reconcile_interval_s=300) as gateway:
        before = probe(urls[0], gateway.url)
        assert admin(gateway, "POST", "", {"name": "v8", "adapter_path": str(demo_adapter)}).status_code == 201
        assert admin(gateway, "POST", "/v8/promote").status_code == 200
        required = httpx.get(f"{gateway.url}/readyz/adapters", timeout=10).json()
        loaded = probe(urls[0], gateway.url)
        assert httpx.post(f"{urls[0]}/unload_lora_adapter", json={"lora_name": "demo-student@v8"},
                          timeout=30).status_code == 200
        missing = probe(urls[0], gateway.url)
        other = probe(urls[1], gateway.url)
        versions = gateway.app.state.students.versions
        monkeypatch.setattr(versions, "get", lambda name: (_ for _ in ()).throw(OperationalError("", {}, OSError())))
        store_down = httpx.get(f"{gateway.url}/readyz/adapters", timeout=10)  # the store unreadable for a moment
        monkeypatch.undo()
    no_gateway = probe(urls[0], gateway.url)  # the gateway has stopped: nothing listens there
    assert (before.returncode, before.stdout.strip()) == (0, "ready: the gateway serves no LoRA version")
    assert required == {"adapters": ["demo-student@v8"]}
    assert loaded.returncode == 0 and other.returncode == 0
    assert missing.returncode == 1
    assert "does not list demo-student@v8" in missing.stderr
    assert no_gateway.returncode == 0 and "the gateway was not asked" in no_gateway.stdout
    assert store_down.status_code == 503 and "the record store cannot be read now" in store_down.text  # was a 500


def test_a_replica_that_does_not_answer_is_not_ready():
    """A model server that does not answer /health is not ready, whatever the gateway says."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = probe(f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and f"http://127.0.0.1:{port} does not answer" in result.stderr
