"""Which tests share a worker (a plugin, registered in tests/conftest.py).

The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup`, pyproject.toml): most of its time is one core
busy and the other waiting on a server, so two workers take about half the time on 2 cores. Each worker has its own
session, so a session fixture would be set up once per worker; the ones that must not be (two pairs of vLLM servers
do not fit beside the rest, two Docker daemons would fight over one image tag) put every test that uses them in one
group, which xdist runs on a single worker. `./dev test -n 0` runs everything in one process (for `--pdb`, `-x`).
"""

from __future__ import annotations

import pytest

# a fixture's name → the group of the tests that use it (directly or through other fixtures)
GROUPS = {"vllm_servers": "vllm", "smollm2": "vllm", "docker": "docker"}


def group_of(item: pytest.Item) -> str | None:
    if item.get_closest_marker("vllm"):  # also the tests that start a vLLM server of their own
        return "vllm"
    return next((GROUPS[name] for name in getattr(item, "fixturenames", ()) if name in GROUPS), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (group := group_of(item)) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
