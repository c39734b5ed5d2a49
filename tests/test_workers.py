"""The suite's worker groups on small suites run by pytester under two real xdist workers: the tests of one group
run on one worker, and a test that uses a group's session fixture from another file fails, naming it. A
silent failure here is what xdist's own `--dist loadgroup` did under pytest 9.2 (tests/workers.py)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

RECORD = """
import os

def test_{name}_{n}():
    with open({out!r}, "a") as seen:
        seen.write(f"{path} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import tests.workers
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester.runpytest_subprocess("-p", "tests.workers", "-p", "no:cacheprovider", "-n", "2", *args)


def test_the_tests_of_a_group_run_on_one_worker(pytester, monkeypatch):
    out = pytester.path / "seen.txt"
    files = {"tests/vllm/test_one.py": "vllm", "tests/vllm/test_two.py": "vllm", "tests/distill/test_import.py": "vllm",
             "tests/test_elsewhere.py": None}
    for path in files:
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(RECORD.format(name=target.stem, n=n, out=str(out), path=path) for n in range(6)))
    result = run(pytester, monkeypatch)
    result.assert_outcomes(passed=24)
    seen = [line.split() for line in out.read_text().splitlines()]
    grouped = {worker for path, worker in seen if files[path] == "vllm"}
    assert len(grouped) == 1, seen
    assert {worker for _, worker in seen} == {"gw0", "gw1"}, seen  # the rest is spread over both


def test_a_shared_fixture_used_outside_its_group_fails_the_test_naming_the_file(pytester, monkeypatch):
    pytester.makeconftest("import pytest\n\n@pytest.fixture(scope='session')\ndef docker():\n    return 'daemon'\n")
    pytester.makepyfile(test_stray="def test_builds_an_image(docker):\n    assert docker\n")
    result = run(pytester, monkeypatch)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_stray.py::test_builds_an_image uses what the 'docker' group's tests share*"
                                 "add its file to GROUPS in tests/workers.py*"])
