"""Lines for the end of the run's log: what the vLLM servers and Docker cost, for the CI time budget (a plugin,
registered in tests/conftest.py). A fixture adds its line with `add`; under pytest-xdist a worker's lines travel to
the controller with the worker's output, and the controller prints them once."""

from __future__ import annotations

import pytest

LINES = pytest.StashKey[list[str]]()


def add(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(LINES, []).append(line)


@pytest.hookimpl(trylast=True)  # after the plugins that add their lines at the session's end
def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its output goes to the controller, its terminal nowhere
        workeroutput["summary_lines"] = session.config.stash.get(LINES, [])


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called in the controller as each worker ends
def pytest_testnodedown(node, error) -> None:
    lines = getattr(node, "workeroutput", {}).get("summary_lines", [])
    node.config.stash.setdefault(LINES, []).extend(lines)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    for line in config.stash.get(LINES, []):
        terminalreporter.write_line(line)
