"""Access control through a real gateway: chat keys, the admin credential, the metrics token, per-key permissions,
and the refusal to listen beyond loopback with no keys."""

from __future__ import annotations

import hashlib
from collections import Counter

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from gateway.app import create_app
from gateway.auth import load_credentials
from gateway.settings import GatewaySettings, ShadowSettings, StudentsSettings
from runtime.credentials import new_key
from tests.conftest import ThreadedServer, gateway_settings

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. Thanks, Maria"
CHAT = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 4, "temperature": 0}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = {name: new_key()[0] for name in ("plain", "ops", "filed", "admin", "metrics")}
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(f"keys:\n  - name: filed\n    sha256: {digest(made['filed'])}\n")
    auth = {"keys": [{"name": "plain", "sha256": digest(made["plain"])},
                     {"name": "ops", "sha256": digest(made["ops"]), "permissions": ["force_route", "prompt_logprobs"]}],
            "keys_file": keys_file, "admin_sha256": digest(made["admin"]), "metrics_sha256": digest(made["metrics"])}
    return made, auth


@pytest.fixture(scope="module")
def guarded(demo_dirs, engine_server, keys, tmp_path_factory):
    made, auth = keys
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    settings = gateway_settings(demo_dirs, engine_server, auth=auth, students=StudentsSettings(enabled=True),
                                shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{store}"))
    with ThreadedServer(create_app(settings)) as server:
        yield server, made


def call(server, path: str, key: str | None = None, method: str = "GET", **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {}) | ({"authorization": f"Bearer {key}"} if key else {})
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def test_no_key_or_a_wrong_key_gets_401(guarded):
    server, _ = guarded
    for key in (None, "kdg-not-a-key", ""):
        reply = call(server, "/v1/chat/completions", key, "POST", json=CHAT)
        assert reply.status_code == 401, reply.text
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.json()["error"]["code"] == "invalid_api_key"
    assert call(server, "/v1/models").status_code == 401
    assert call(server, "/v1/chat/completions", "kdg-x", "POST", headers={"authorization": "Basic abc"},
                json=CHAT).status_code == 401


def test_a_chat_key_works_with_the_openai_sdk(guarded):
    server, made = guarded
    for name in ("plain", "filed", "admin"):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=made[name], max_retries=0)
        reply = client.chat.completions.create(model="kdgate-demo", messages=CHAT["messages"], max_tokens=4)
        assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="kdg-wrong", max_retries=0).models.list()


def test_admin_endpoints_need_the_admin_credential(guarded):
    server, made = guarded
    assert call(server, "/admin/status").status_code == 401
    assert call(server, "/admin/status", made["plain"]).status_code == 403
    assert call(server, "/admin/status", made["metrics"]).status_code == 403
    status = call(server, "/admin/status", made["admin"])
    assert status.status_code == 200
    assert {key["name"] for key in status.json()["keys"]} == {"plain", "ops", "filed"}
    assert digest(made["plain"]) not in status.text


def test_student_versions_need_the_admin_credential(guarded, demo_dirs):
    """A chat key, even one with every permission, never reaches the student admin API."""
    server, made = guarded
    register = {"name": "v2", "model_dir": str(demo_dirs[1])}
    assert call(server, "/admin/v1/students").status_code == 401
    assert call(server, "/admin/v1/students", "kdg-wrong").status_code == 401
    for key in ("plain", "ops", "metrics"):
        assert call(server, "/admin/v1/students", made[key]).status_code == 403
        assert call(server, "/admin/v1/students", made[key], "POST", json=register).status_code == 403
        assert call(server, "/admin/v1/students/rollback", made[key], "POST").status_code == 403
    assert call(server, "/admin/v1/students", made["admin"]).json()["slot"]["active"] == "initial"


def test_metrics_need_their_token_or_the_admin_credential(guarded):
    server, made = guarded
    assert call(server, "/metrics").status_code == 401
    assert call(server, "/metrics", made["plain"]).status_code == 403
    assert call(server, "/metrics", made["metrics"]).status_code == 200
    assert call(server, "/metrics", made["admin"]).status_code == 200
    assert call(server, "/v1/chat/completions", made["metrics"], "POST", json=CHAT).status_code == 403


def test_forcing_a_route_and_prompt_logprobs_need_their_permission(guarded):
    server, made = guarded
    force = {"x-kdgate-force": "teacher"}
    refused = call(server, "/v1/chat/completions", made["plain"], "POST", json=CHAT, headers=force)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "x-kdgate-force"
    allowed = call(server, "/v1/chat/completions", made["ops"], "POST", json=CHAT, headers=force)
    assert allowed.status_code == 200 and allowed.headers["x-kdgate-route"] == "teacher"
    scoring = CHAT | {"prompt_logprobs": 1, "max_tokens": 1}
    assert call(server, "/v1/chat/completions", made["plain"], "POST", json=scoring).status_code == 403
    assert call(server, "/v1/chat/completions", made["ops"], "POST", json=scoring).status_code == 200


def test_probes_stay_open_and_readiness_details_are_for_admin(guarded):
    server, made = guarded
    assert call(server, "/healthz").status_code == 200
    ready = call(server, "/readyz")
    assert ready.status_code == 200 and set(ready.json()["backends"]["teacher"]) == {"ready"}
    assert "model" in call(server, "/readyz", made["admin"]).json()["backends"]["teacher"]


def api_calls(server, made) -> Counter:
    text = call(server, "/metrics", made["metrics"]).text
    return Counter({(s.labels["key"], s.labels["status"]): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name == "kdgate_api_requests_total"})


def test_calls_are_counted_by_key_name(guarded):
    server, made = guarded
    before = api_calls(server, made)  # the module's earlier tests made plain/200 and unknown/401 calls already
    assert call(server, "/v1/chat/completions", made["plain"], "POST", json=CHAT).status_code == 200
    assert call(server, "/v1/chat/completions", None, "POST", json=CHAT).status_code == 401
    after = api_calls(server, made)
    after.subtract(before)
    moved = {labels: delta for labels, delta in after.items() if delta}
    # one of the two scrapes falls between the snapshots, whichever side of its answer it is counted on
    assert moved == {("plain", "200"): 1, ("unknown", "401"): 1, ("metrics", "200"): 1}


def test_no_keys_on_an_outside_address_is_refused_unless_chosen():
    with pytest.raises(ValidationError, match="auth.mode: none"):
        GatewaySettings(host="0.0.0.0")
    assert GatewaySettings(host="0.0.0.0", auth={"mode": "none"}).auth_required() is False
    assert GatewaySettings(host="::1").auth_required() is False  # loopback, open, said in the banner
    with pytest.raises(ValidationError, match="no key is configured"):
        GatewaySettings(auth={"mode": "keys"})


def test_key_entries_are_checked(tmp_path):
    with pytest.raises(ValidationError, match="reserved"):
        GatewaySettings(auth={"keys": [{"name": "admin", "sha256": "0" * 64}]})
    with pytest.raises(ValidationError, match="sha256"):
        GatewaySettings(auth={"keys": [{"name": "app", "sha256": "my-plain-key"}]})
    missing = GatewaySettings(auth={"keys_file": tmp_path / "nope.yaml"})
    with pytest.raises(ValueError, match="nope.yaml does not exist"):
        load_credentials(missing)
    (tmp_path / "bad.yaml").write_text("keys:\n  - name: x\n")
    with pytest.raises(ValueError, match="sha256"):
        load_credentials(GatewaySettings(auth={"keys_file": tmp_path / "bad.yaml"}))


def test_an_open_gateway_lets_anyone_force_a_route(gateway):
    """The embedded demo on loopback with no keys: every caller may do everything, as before."""
    reply = call(gateway, "/v1/chat/completions", None, "POST", json=CHAT, headers={"x-kdgate-force": "teacher"})
    assert reply.status_code == 200 and reply.headers["x-kdgate-route"] == "teacher"


def test_each_call_is_logged_with_its_key_name_not_its_key(guarded, caplog):
    server, made = guarded
    with caplog.at_level("INFO", logger="gateway.access"):
        call(server, "/v1/chat/completions", made["plain"], "POST", json=CHAT)
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.access"]
    assert any("POST /v1/chat/completions 200" in line and "key=plain" in line for line in lines)
    assert not any(made["plain"] in line for line in lines)


def test_a_refused_call_is_logged_with_its_client_and_reason_not_the_token(guarded, caplog):
    """Failed logins leave a line (they left none): status, path, the key name when one was recognised, the
    client's address and why, at WARNING; never the token that was sent."""
    server, made = guarded
    wrong = "kdg-not-a-key-at-all-1234567890"
    with caplog.at_level("INFO", logger="gateway.access"):
        call(server, "/v1/chat/completions", wrong, "POST", json=CHAT)
        call(server, "/admin/status", made["plain"])
    refused = [record for record in caplog.records if record.name == "gateway.access" and
               record.levelname == "WARNING"]
    assert len(refused) == 2, [record.getMessage() for record in refused]
    unknown, forbidden = (record.getMessage() for record in refused)
    assert "POST /v1/chat/completions 401" in unknown and "key=unknown" in unknown and "client=127.0.0.1" in unknown
    assert "no valid API key" in unknown
    assert "GET /admin/status 403" in forbidden and "key=plain" in forbidden
    assert not any(wrong in record.getMessage() or made["plain"] in record.getMessage() for record in caplog.records)
