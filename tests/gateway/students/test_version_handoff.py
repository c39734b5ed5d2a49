"""A student version brings its own handoff floor (the trainer refits it to the teacher-share target): requests it
serves hand off at that floor, the other versions keep the gateway's `routing.handoff.min_prob`."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings, StudentsSettings
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.students.test_promotion import admin

EASY = "Hi support, We are an Enterprise customer. My SmrtHub Pro from order 58690 stopped working. No rush on this."


def route(server) -> tuple[str, str, str]:
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": EASY}], "temperature": 0, "max_tokens": 48})
    assert reply.status_code == 200, reply.text
    headers = reply.headers
    return headers["x-kdgate-student-version"], headers["x-kdgate-route"], headers["x-kdgate-route-reason"]


def test_a_versions_own_floor_is_the_one_its_requests_hand_off_at(demo_dirs, engine_server, tmp_path):
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="student_only",
                                                        handoff=HandoffSettings(enabled=True, min_prob=0.05)),
                                shadow=ShadowSettings(enabled=False, store_url=f"sqlite:///{tmp_path / 's.sqlite3'}"),
                                students=StudentsSettings(enabled=True, poll_interval_s=0.2))
    with ThreadedServer(create_app(settings)) as server:
        assert route(server) == ("initial", "student", "policy:student_only")  # no token below 0.05
        fussy = {"name": "fussy", "model_dir": str(demo_dirs[0]), "handoff_min_prob": 0.999999}
        assert admin(server, "POST", "", fussy).status_code == 201
        assert admin(server, "GET", "/fussy").json()["handoff_min_prob"] == 0.999999
        assert admin(server, "POST", "/fussy/promote").status_code == 200
        assert route(server) == ("fussy", "teacher", "handoff")  # some token is below 0.999999
        assert admin(server, "POST", "/rollback").status_code == 200
        assert route(server) == ("initial", "student", "policy:student_only")
        bad = admin(server, "POST", "", {"name": "v3", "model_dir": str(demo_dirs[0]), "handoff_min_prob": 1.5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "handoff_min_prob"
