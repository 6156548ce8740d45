"""The unit tests' own time limit is in force (tests/unit/conftest.py), far below the 600 s
that pyproject gives the integration and container tests."""

from __future__ import annotations

import pytest

from tests.unit.conftest import UNIT_TIMEOUT_S


def test_a_unit_test_runs_under_the_short_timeout(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args == (UNIT_TIMEOUT_S,)
    assert UNIT_TIMEOUT_S <= 60 < int(request.config.getini("timeout"))
