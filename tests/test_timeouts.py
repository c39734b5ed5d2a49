"""The suite's time limits on small suites run by pytester: a hung test fails with pytest-timeout's message, a test
marked slow gets the longer limit, and one that names its own keeps it."""

from __future__ import annotations

import pytest

SUITE = """
import time
import pytest

def test_hangs():
    time.sleep(60)

@pytest.mark.slow
def test_slow_and_quick():
    time.sleep(1.5)

@pytest.mark.slow
@pytest.mark.timeout(1)
def test_slow_with_its_own_limit():
    time.sleep(60)
"""


@pytest.fixture
def result(pytester, monkeypatch):
    monkeypatch.setattr("tests.timeouts.SLOW_TIMEOUT_S", 30)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ntimeout = 1\n"
                     "markers = slow: slow\n")
    return pytester.runpytest("-p", "tests.timeouts", "-p", "no:cacheprovider")


def test_a_hung_test_fails_at_its_limit_and_a_slow_one_gets_longer(result):
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*Timeout (>1.0s) from pytest-timeout*"])
    failed = {report.nodeid.rsplit("::", 1)[1] for report in result.reprec.getfailures()}
    assert failed == {"test_hangs", "test_slow_with_its_own_limit"}
