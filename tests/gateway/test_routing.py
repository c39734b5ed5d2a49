"""The gateway's routing seam: policies declare the backends they need; a forced route wins; settings build them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.routing import Router, build_policy
from gateway.settings import RoutingSettings
from router.policy import FixedRoute, RouteRequest
from runtime.errors import InvalidRequest

REQUEST = RouteRequest("r", message_count=1, prompt_chars=10)
BOTH = {"student": object(), "teacher": object()}


def test_a_policy_whose_backend_is_missing_is_refused_at_startup():
    with pytest.raises(ValueError, match="teacher backend"):
        Router(FixedRoute("teacher"), {"student": object()})
    with pytest.raises(ValueError, match="teacher backend"):
        Router(build_policy(RoutingSettings(policy="random")), {"student": object()})


def test_forced_route_wins_over_the_policy():
    router = Router(FixedRoute("student"), BOTH)
    assert router.decide(REQUEST, None).route == "student"
    assert router.decide(REQUEST, "teacher").reason == "forced:header"


def test_forcing_an_unconfigured_backend_is_a_400():
    with pytest.raises(InvalidRequest) as caught:
        Router(FixedRoute("student"), {"student": object()}).decide(REQUEST, "teacher")
    assert caught.value.parameter == "x-kdgate-force"


def test_confidence_policy_needs_a_policy_file(tmp_path):
    with pytest.raises(ValidationError, match="kdgate router calibrate"):
        RoutingSettings(policy="confidence")
    with pytest.raises(ValueError, match="does not exist"):
        build_policy(RoutingSettings(policy="confidence", policy_file=tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        build_policy(RoutingSettings(policy="confidence", policy_file=tmp_path / "bad.json"))


def test_the_committed_demo_policy_loads():
    from distill.demo import DEMO_STUDENT_DIR

    policy = build_policy(RoutingSettings(policy="confidence",
                                          policy_file=DEMO_STUDENT_DIR.parent / "router-policy.json"))
    assert policy.hold_back.tokens is None and policy.target_teacher_fraction == 0.2
