"""The routing seam: fixed policies and forced routes."""

from __future__ import annotations

import pytest

from router.policy import RouteRequest, build_policy, forced


def test_fixed_policies_always_choose_their_backend():
    request = RouteRequest("r", message_count=1, prompt_chars=10)
    assert build_policy("student_only").decide(request).route == "student"
    decision = build_policy("teacher_only").decide(request)
    assert (decision.route, decision.reason) == ("teacher", "policy:teacher_only")


def test_forced_route_says_why():
    assert forced("teacher").reason == "forced:header"


def test_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="student_only"):
        build_policy("confident")

