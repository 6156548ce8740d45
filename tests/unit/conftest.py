"""Unit tests run in seconds (the slowest, a hypothesis search, about 8 s on two busy cores): one
that hangs fails after UNIT_TIMEOUT_S with its stack, instead of holding the run for the 600 s
that integration and container tests are given (pyproject's `timeout`)."""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_TIMEOUT_S = 60
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this directory's: filter by path.
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))
