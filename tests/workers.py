"""Which tests share a worker (a plugin, registered in tests/conftest.py).

The suite runs on two pytest-xdist workers (`-n 2`, pyproject.toml): most of its time is one core busy and the other
waiting on a server, so two workers take about half the time on 2 cores. Each worker has its own session, so a
session fixture is set up once per worker; the ones that must not be (two pairs of vLLM servers do not fit beside the
rest, two Docker daemons would fight over one image tag) are used only by the test files in GROUPS, and each group
runs on a single worker. A test elsewhere that uses one of them fails, naming the file to add.
`./dev test -n 0` runs everything in one process (for `--pdb`, `-x`).

The groups are kept by a scheduler of our own, not by xdist's `--dist loadgroup`: that one tags each test's id
with its group, which pytest 9.2's structured ids no longer let it do, and then it groups nothing, silently
(pytest-dev/pytest-xdist#1386).
"""

from __future__ import annotations

import pytest

# a test file (or folder) → the group its tests run in, on one worker
GROUPS = {"tests/vllm/": "vllm", "tests/distill/test_import.py": "vllm",
          "tests/deploy/test_images.py": "docker", "tests/deploy/test_torch_images.py": "docker"}
# a session fixture → the group of every test that uses it (directly or through other fixtures)
SHARED = {"vllm_servers": "vllm", "smollm2": "vllm", "docker": "docker"}


def group_of(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    return next((group for prefix, group in GROUPS.items() if path.startswith(prefix)), None)


def groups_needed(item: pytest.Item) -> set[str]:
    needed = {SHARED[name] for name in getattr(item, "fixturenames", ()) if name in SHARED}
    if item.get_closest_marker("vllm"):  # also the tests that start a vLLM server of their own
        needed.add("vllm")
    return needed


def pytest_runtest_setup(item: pytest.Item) -> None:
    needed = groups_needed(item)
    if needed and needed != {group_of(item.nodeid)}:
        pytest.fail(f"{item.nodeid} uses what the '{sorted(needed)[0]}' group's tests share (a session fixture set up "
                    "once per worker): add its file to GROUPS in tests/workers.py", pytrace=False)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called in the controller
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "load":  # another --dist asked for by hand is xdist's to schedule
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        """Each group is one unit of work (the larger units first), every other test a unit of its own."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return Grouped(config, log)
