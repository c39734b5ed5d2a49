"""The gateway's routing seam: policies declare the backends they need; a forced route wins."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.routing import Router
from router.policy import RouteRequest, build_policy

REQUEST = RouteRequest("r", message_count=1, prompt_chars=10)


def test_a_policy_whose_backend_is_missing_is_refused_at_startup():
    with pytest.raises(ValueError, match="teacher backend"):
        Router(build_policy("teacher_only"), ["student"])


def test_forced_route_wins_over_the_policy():
    router = Router(build_policy("student_only"), ["student", "teacher"])
    assert router.decide(REQUEST, None).route == "student"
    assert router.decide(REQUEST, "teacher").reason == "forced:header"


def test_forcing_an_unconfigured_backend_is_a_400():
    with pytest.raises(InvalidRequest) as caught:
        Router(build_policy("student_only"), ["student"]).decide(REQUEST, "teacher")
    assert caught.value.parameter == "x-kdgate-force"
