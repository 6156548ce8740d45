"""Unit tests run in seconds (the slowest, a hypothesis search, about 8 s on two busy cores): one
that hangs fails after UNIT_TIMEOUT_S with its stack, instead of holding the run for the 600 s
that integration and container tests are given (pyproject's `timeout`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.drivers.redis_server import new_server
from fleet.settings import Settings
from fleet.store.memory import MemoryStore
from fleet.store.protocol import Store
from fleet.store.redis_store import RedisStore

UNIT_TIMEOUT_S = 60
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this directory's: filter by path.
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same test body on both stores: the in-memory twin, then a real server (integration)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    server = new_server(tmp_path / "redis", binary=Settings().redis_server).start()
    try:
        yield RedisStore(redis.Redis.from_url(server.url))
    finally:
        server.stop()
