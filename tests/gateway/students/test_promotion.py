"""Student versions on a real gateway (local demo student, teacher over HTTP): promote and roll back under streaming
load with no failed request and no mixed stream, every refusal named, two promotions at once, a restart, a canary
that splits traffic and one that is rolled back on its own."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import CanarySettings, HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from tests.conftest import ThreadedServer, free_port, gateway_settings

HARD = ("Hi there, Felix here. Order 28898 was a StreamPlus and order 72108 was a TaskPilto. The TaskPilto says my "
        "account is disabled. Last year order 36966 had the same problem. I am a Plus member.")  # the README's
PROMPTS = [HARD] + [f"Hello, my SmartHub Pro from order {48213 + 7 * index} will not turn on. Thanks, Maria"
                    for index in range(5)]
MAX_TOKENS = 48


def settings_with_store(demo_dirs, engine_server, store, **students):
    return gateway_settings(demo_dirs, engine_server,
                            routing=RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=False)),
                            shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{store}"),
                            students=StudentsSettings(enabled=True, poll_interval_s=0.2, **students))


@pytest.fixture
def versioned(demo_dirs, engine_server, tmp_path):
    with ThreadedServer(create_app(settings_with_store(demo_dirs, engine_server, tmp_path / "store.sqlite3"))) as server:
        yield server


def admin(server, method: str, path: str, body: dict | None = None, **headers) -> httpx.Response:
    return httpx.request(method, f"{server.url}/admin/v1/students{path}", json=body, timeout=120, headers=headers)


def stream(server, prompt: str, answered_at: list | None = None) -> tuple[str, str]:
    """One streamed answer and the student version its header names; `answered_at` gets the monotonic time its
    headers (and so its version) arrived."""
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS,
            "stream": True}
    text = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        if answered_at is not None:
            answered_at.append(time.monotonic())
        assert response.status_code == 200, response.read()
        version = response.headers["x-kdgate-student-version"]
        frames = [line for line in response.iter_lines() if line]
        for line in frames:
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                if chunk["choices"]:
                    text.append(chunk["choices"][0]["delta"].get("content") or "")
        assert frames[-1] == "data: [DONE]"
    return "".join(text), version


def answers(server) -> dict[str, str]:
    pairs = [stream(server, prompt) for prompt in PROMPTS]
    assert len({version for _, version in pairs}) == 1
    return {prompt: text for prompt, (text, _) in zip(PROMPTS, pairs, strict=True)}


SWITCH_DEADLINE_S = 120.0  # for two answers of the new version after a switch: a stuck switch, not a slow box


def switch_under_load(server, switches: list[tuple[Callable, str]]) -> tuple[list[tuple[str, str, str, float]],
                                                                           list[str]]:
    """Three clients streaming without pause while each switch runs in turn: every (prompt, answer, version, time
    its headers arrived) they got, and every failure. Each switch `(call, version)` waits for two answers before
    it (the first: of the version serving at the start), and the next waits for two answers of `version` begun
    after it returned, so that every version is seen however slow the box is."""
    seen, failures, stop = [], [], threading.Event()

    def load(offset: int) -> None:
        index = offset
        while not stop.is_set():
            prompt = PROMPTS[index % len(PROMPTS)]
            try:
                answered_at = []
                seen.append((prompt, *stream(server, prompt, answered_at), answered_at[0]))
            except Exception as error:  # noqa: BLE001 — every failure is the finding
                failures.append(repr(error))
            index += 1

    def wait_for_answers(version: str | None, after: float) -> None:
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while sum(at > after and version in (None, got) for _, _, got, at in list(seen)) < 2:
            assert time.monotonic() < deadline, f"no two answers of {version or 'any version'} in time: {failures}"
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for_answers(None, 0.0)
        for switch, version in switches:
            switch()
            wait_for_answers(version, time.monotonic())
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return seen, failures


def test_promote_and_roll_back_under_load_fail_nothing_and_mix_nothing(versioned, demo_dirs):
    """The teacher's weights registered as student version `v2` (same tokenizer, different answers): every answer
    during the switches is exactly one version's greedy answer, the one its header names."""
    server = versioned
    expected = {"initial": answers(server)}
    assert admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])}).status_code == 201
    assert admin(server, "POST", "/v2/promote").status_code == 200
    expected["v2"] = answers(server)
    assert admin(server, "POST", "/rollback").status_code == 200
    assert expected["v2"] != expected["initial"]

    seen, failures = switch_under_load(server, [(lambda: admin(server, "POST", "/v2/promote"), "v2"),
                                                (lambda: admin(server, "POST", "/rollback"), "initial")])
    assert failures == []
    assert {version for _, _, version, _ in seen} == {"initial", "v2"}
    mixed = [(prompt, text, version) for prompt, text, version, _ in seen if expected[version][prompt] != text]
    assert mixed == [], mixed[:3]
    versions = {row["name"]: row for row in admin(server, "GET", "").json()["versions"]}
    assert versions["v2"]["state"] == "retired" and versions["initial"]["state"] == "active"


def test_refusals_name_what_is_wrong(versioned, demo_dirs, tmp_path):
    server = versioned
    missing = admin(server, "POST", "/nope/promote")
    assert missing.status_code == 404 and "no student version `nope`" in missing.json()["error"]["message"]
    gone = admin(server, "POST", "", {"name": "v9", "model_dir": str(tmp_path / "absent")})
    assert gone.status_code == 400 and str(tmp_path / "absent") in gone.json()["error"]["message"]
    assert gone.json()["error"]["param"] == "model_dir"
    no_adapter = admin(server, "POST", "", {"name": "v9", "adapter_path": str(tmp_path / "absent-adapter")})
    assert no_adapter.status_code == 400 and no_adapter.json()["error"]["param"] == "adapter_path"
    assert f"{tmp_path / 'absent-adapter'} does not exist" in no_adapter.json()["error"]["message"]  # not "not peft"
    both = admin(server, "POST", "", {"name": "v9", "model_dir": str(demo_dirs[1]), "base_url": "http://x/v1"})
    assert both.status_code == 400 and "exactly one of" in both.json()["error"]["message"]
    other = tmp_path / "other-tokenizer"
    shutil.copytree(demo_dirs[0], other)
    tokenizer = other / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<|pad|>"', '"<|padding|>"'))
    mismatch = admin(server, "POST", "", {"name": "v9", "model_dir": str(other)})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "tokenizer"
    assert "differs from the active student" in mismatch.json()["error"]["message"]
    assert admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])}).status_code == 201
    again = admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])})
    assert again.status_code == 400 and "exists already" in again.json()["error"]["message"]
    bad_share = admin(server, "POST", "/v2/promote", {"canary_fraction": 1.5})
    assert bad_share.status_code == 400 and bad_share.json()["error"]["param"] == "canary_fraction"
    nothing = admin(server, "POST", "/rollback")
    assert nothing.status_code == 400 and "nothing to roll back to" in nothing.json()["error"]["message"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_promoting_a_version_with_corrupt_weights_is_a_400_that_names_it(versioned, demo_dirs, tmp_path, damage):
    """Weights that cannot be read (a copy cut short, bytes that are no safetensors file) were a 500 with a
    traceback; they are the version's fault: 400 naming it and the file, and the active student keeps serving."""
    server = versioned
    broken = tmp_path / "broken"
    shutil.copytree(demo_dirs[0], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\x07" * 64 + data[64:])
    assert admin(server, "POST", "", {"name": "cracked", "model_dir": str(broken)}).status_code == 201
    promoted = admin(server, "POST", "/cracked/promote")
    assert promoted.status_code == 400, promoted.text
    message = promoted.json()["error"]["message"]
    assert "version `cracked` could not be loaded" in message and "cannot be loaded" in message
    assert admin(server, "GET", "/status").json()["active"] == "initial"
    assert stream(server, PROMPTS[1])[1] == "initial"


def test_of_two_promotions_at_once_one_wins_and_the_other_gets_409(versioned, demo_dirs):
    server = versioned
    for name in ("v2", "v3"):
        assert admin(server, "POST", "", {"name": name, "model_dir": str(demo_dirs[1])}).status_code == 201
    manager = server.app.state.students
    loading, release, load = threading.Event(), threading.Event(), manager.loader.load

    async def held_load(version):  # v2's load waits until v3's promotion has been answered: a race, every time
        loading.set()
        await asyncio.to_thread(release.wait, 60)
        return await load(version)

    manager.loader.load = held_load
    first: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: first.append(admin(server, "POST", "/v2/promote")))
    thread.start()
    assert loading.wait(30), "v2's promotion never reached its load: the second one would not race it"
    try:
        second = admin(server, "POST", "/v3/promote")
    finally:
        release.set()
        thread.join(60)
    assert first[0].status_code == 200 and first[0].json()["active"] == "v2"
    assert second.status_code == 409 and second.json()["error"]["code"] == "conflict"


def test_a_restarted_gateway_serves_the_active_version_from_the_store(demo_dirs, engine_server, tmp_path):
    store = tmp_path / "store.sqlite3"
    settings = settings_with_store(demo_dirs, engine_server, store)
    with ThreadedServer(create_app(settings)) as server:
        admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])})
        admin(server, "POST", "/v2/promote")
    with ThreadedServer(create_app(settings)) as server:
        assert stream(server, PROMPTS[0])[1] == "v2"
        models = httpx.get(f"{server.url}/admin/status", timeout=10).json()["backends"]
        assert models["student"]["model"] == "demo-student@v2"


def test_a_canary_serves_its_share_and_a_failing_one_is_rolled_back_by_itself(demo_dirs, engine_server, tmp_path):
    """A canary on a server that is not there: its requests fail before their first token and the teacher answers
    them (no client sees an error); once it has served its minimum sample it is rolled back, and counted."""
    settings = settings_with_store(demo_dirs, engine_server, tmp_path / "store.sqlite3",
                                   canary=CanarySettings(min_requests=5))
    with ThreadedServer(create_app(settings)) as server:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        assert admin(server, "POST", "", {"name": "broken", "base_url": dead, "served_model": "x"}).status_code == 201
        assert admin(server, "POST", "/broken/promote", {"canary_fraction": 0.5}).json()["canary"] == "broken"
        served = Counter()
        for index in range(40):
            body = {"messages": [{"role": "user", "content": PROMPTS[index % 6]}], "max_tokens": 4}
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            served[(reply.headers["x-kdgate-student-version"], reply.headers["x-kdgate-route-reason"])] += 1
            if server.app.state.students.slot.canary is None:
                break
        time.sleep(0.5)
        slot = admin(server, "GET", "/status").json()
        versions = {row["name"]: row for row in admin(server, "GET", "").json()["versions"]}
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert served[("broken", "student_error")] >= 5  # the teacher answered every one of the canary's
    assert {version for version, _ in served} == {"initial", "broken"}  # the split sent some to each
    assert slot["canary"] is None and slot["active"] == "initial"
    assert versions["broken"]["state"] == "rejected" and "automatic" in versions["broken"]["notes"]
    assert 'kdgate_student_rollbacks_total{how="automatic"} 1.0' in metrics


CANARY_REQUESTS = 200
CANARY_Z = 4.5  # a healthy split falls outside about once in 150,000 runs (two-sided normal tail at 4.5 σ)


def check_canary_share(canary_count: int, requests: int, fraction: float, z: float = CANARY_Z) -> None:
    """The slot draws each request's version on its own (gateway/students/slot.py: `random() < canary_fraction`),
    so the canary's count is Binomial(requests, fraction): it must lie within z standard deviations of its mean."""
    mean, spread = requests * fraction, math.sqrt(requests * fraction * (1 - fraction))
    assert abs(canary_count - mean) <= z * spread, \
        f"the canary served {canary_count} of {requests}; {fraction:.0%} is {mean:g} ± {z * spread:.1f}"


def test_a_healthy_canary_serves_its_share(demo_dirs, engine_server, tmp_path):
    """`canary_fraction` 0.5, measured: of 200 requests the canary serves 100 ± 32 (4.5 σ). Its minimum sample is
    set out of reach so that no verdict moves the slot during the count."""
    settings = settings_with_store(demo_dirs, engine_server, tmp_path / "store.sqlite3",
                                   canary=CanarySettings(min_requests=100_000))
    with ThreadedServer(create_app(settings)) as server:
        assert admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])}).status_code == 201
        assert admin(server, "POST", "/v2/promote", {"canary_fraction": 0.5}).json()["canary"] == "v2"
        served = Counter()
        with httpx.Client(timeout=60) as client:
            for index in range(CANARY_REQUESTS):
                body = {"messages": [{"role": "user", "content": PROMPTS[index % 6]}], "max_tokens": 1}
                reply = client.post(f"{server.url}/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                served[reply.headers["x-kdgate-student-version"]] += 1
        slot = admin(server, "GET", "/status").json()
    assert set(served) == {"initial", "v2"} and sum(served.values()) == CANARY_REQUESTS
    assert slot["canary"] == "v2" and slot["active"] == "initial"  # nothing moved the slot while counting
    check_canary_share(served["v2"], CANARY_REQUESTS, 0.5)


def test_the_canary_share_check_fails_when_the_split_is_drawn_with_the_wrong_fraction():
    """The share check can fail: the real slot, drawing its canary at 0.3 instead of the 0.5 asked for (or never),
    is caught over the same 200 requests, while a split drawn at 0.5 passes."""
    from gateway.students.slot import ServedStudent, StudentSlot

    def canary_count(drawn_at: float, seed: int) -> int:
        slot = StudentSlot(ServedStudent("initial", backend=None, policy=None), seed=seed)
        slot.canary, slot.canary_fraction = ServedStudent("v2", backend=None, policy=None), drawn_at
        return sum(slot.acquire().canary for _ in range(CANARY_REQUESTS))

    check_canary_share(canary_count(0.5, seed=1), CANARY_REQUESTS, 0.5)
    for drawn_at in (0.3, 0.0):
        with pytest.raises(AssertionError):
            check_canary_share(canary_count(drawn_at, seed=1), CANARY_REQUESTS, 0.5)
    with pytest.raises(AssertionError):  # and by a hand-made count just past the bound
        check_canary_share(round(100 + CANARY_Z * math.sqrt(50)) + 1, CANARY_REQUESTS, 0.5)


def test_models_lists_the_serving_versions_and_a_client_may_pin_one(versioned, demo_dirs):
    """As vLLM lists an adapter under its base model: `kdgate-demo@<version>` for the active version and the canary,
    and a request naming one is served by it (a canary can be tried on purpose)."""
    server = versioned
    admin(server, "POST", "", {"name": "v2", "model_dir": str(demo_dirs[1])})
    admin(server, "POST", "/v2/promote", {"canary_fraction": 0.01})
    cards = {card["id"]: card for card in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]}
    assert set(cards) == {"kdgate-demo", "kdgate-demo@initial", "kdgate-demo@v2"}
    assert cards["kdgate-demo@v2"]["parent"] == "kdgate-demo"
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4}
    for _ in range(5):
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body | {"model": "kdgate-demo@v2"}, timeout=60)
        assert reply.headers["x-kdgate-student-version"] == "v2" and reply.json()["model"] == "kdgate-demo@v2"
    retired = httpx.post(f"{server.url}/v1/chat/completions", json=body | {"model": "kdgate-demo@v9"}, timeout=60)
    assert retired.status_code == 404
