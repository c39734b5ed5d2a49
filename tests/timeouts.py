"""Per-test time limits (a plugin, registered in tests/conftest.py; pytest-timeout enforces them).

pyproject.toml gives every test 5 minutes (`timeout = 300`); a test marked slow gets 15 unless it names its own limit
with @pytest.mark.timeout(N). A hung test then fails by itself instead of holding CI until its 90-minute limit.
"""

from __future__ import annotations

import pytest

SLOW_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
