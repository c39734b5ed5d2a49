"""The canary's verdict against the active version, on each operational figure: errors, teacher share, p99 TTFT."""

from __future__ import annotations

from gateway.settings import CanarySettings
from gateway.students.canary import VersionFigures, judge


def served(requests: int, ttft_s: float, slow: int = 0, slow_ttft_s: float = 0.0, errors: int = 0) -> VersionFigures:
    figures = VersionFigures(requests=requests, errors=errors)
    for index in range(requests):
        figures.add_ttft(slow_ttft_s if index < slow else ttft_s)
    return figures


def test_a_canary_whose_tail_latency_doubles_is_rolled_back():
    settings = CanarySettings(min_requests=50)
    active = served(200, 0.020)
    verdict = judge(served(100, 0.020, slow=5, slow_ttft_s=0.400), active, settings)  # 5 % of answers at 400 ms
    assert verdict.action == "rollback" and "p99 TTFT 400 ms" in verdict.reason


def test_the_same_mean_but_a_healthy_tail_waits():
    settings = CanarySettings(min_requests=50)
    assert judge(served(100, 0.030), served(200, 0.020), settings).action == "wait"  # +10 ms: within the slack


def test_too_few_answers_or_the_rule_off_never_judge_latency():
    slow = served(100, 0.020, slow=50, slow_ttft_s=1.0)
    assert judge(slow, served(30, 0.020), CanarySettings(min_requests=50)).action == "wait"
    assert judge(slow, served(200, 0.020), CanarySettings(min_requests=50, max_ttft_p99_ratio=None)).action == "wait"


def test_errors_are_judged_before_latency():
    verdict = judge(served(100, 0.020, errors=10), served(200, 0.020), CanarySettings(min_requests=50))
    assert verdict.action == "rollback" and verdict.reason.startswith("error rate")
