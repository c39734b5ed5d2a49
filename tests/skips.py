"""Skips, counted and policed (a plugin, registered in tests/conftest.py).

Every run ends with its skips counted by reason, so `./dev test` says what was not checked and why without `-rs`.
Under CI (`CI=true`) a skip fails the run unless the test needs a GPU (tests/needs.py): .ci/run installs every
service the suite uses, so a skip there means something that should have been checked was not.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests import needs


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter) -> None:
    """Every run ends with its skips counted by reason (`./dev test` shows why, without `-rs`)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(skip_reason(report) for report in skipped)
    terminalreporter.section(f"{len(skipped)} skipped, by reason")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skip fails the run unless the test needs a GPU: every other test can run there (.ci/run installs
    its services), so a skip means something that should have been checked was not."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not needs.in_ci() or reporter is None:
        return
    refused = [report for report in reporter.stats.get("skipped", [])
               if not needs.allowed_under_ci(skip_reason(report))]
    if refused:
        reporter.write_line(f"ci: {len(refused)} skipped under CI=true, where only tests that need a GPU may skip; "
                            "the run fails:", red=True)
        for report in refused:
            reporter.write_line(f"ci:   {report.nodeid}: {skip_reason(report)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
