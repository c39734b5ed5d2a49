"""tests/needs.py and tests/skips.py on small suites run by pytester: under CI a missing service fails naming
what to install and any skip but a GPU one fails the run; elsewhere a skip says what to install and the run ends with
the skips counted by reason."""

from __future__ import annotations

import pytest

SUITE = '''
import pytest
from tests import needs

def test_needs_a_missing_service():
    needs.binary("kdgate-no-such-server", install="apt-get install kdgate-no-such-package")

def test_skips_itself():
    pytest.skip("some reason")

def test_needs_a_gpu():
    pytest.skip(needs.GPU_REASON + " (CUDA build of torch)")

def test_passes():
    pass
'''


@pytest.fixture
def run(pytester, monkeypatch):
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def run_with(ci: str | None, *args: str):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest("-p", "tests.skips", "-p", "no:cacheprovider", *args)
    return run_with


def test_outside_ci_a_missing_service_is_a_skip_that_says_what_to_install_and_skips_are_counted(run):
    result = run(None)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*3 skipped, by reason*",
                                 "*1  `kdgate-no-such-server` is missing: apt-get install kdgate-no-such-package",
                                 "*1  some reason", "*1  needs a CUDA GPU (CUDA build of torch)"])


def test_under_ci_a_missing_service_fails_naming_it(run):
    result = run("true", "-k", "missing or passes")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*CI runs every test that needs no GPU, and `kdgate-no-such-server` is missing: "
                                 "apt-get install kdgate-no-such-package*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_under_ci_any_other_skip_fails_the_run_and_is_named(run):
    result = run("true", "-k", "itself or passes")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ci: 1 skipped under CI=true, where only tests that need a GPU may skip*",
                                 "ci:   test_suite.py::test_skips_itself: some reason"])


def test_under_ci_a_gpu_test_may_skip(run):
    result = run("true", "-k", "gpu or passes")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
