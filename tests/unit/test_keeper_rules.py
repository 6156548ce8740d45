"""The keeper's backoff and `fleet down`'s sweep rule, on plain values."""

from __future__ import annotations

from pathlib import Path


def test_the_keeper_backoff_doubles_and_starts_over_after_a_stable_run() -> None:
    from fleet.drivers.keeper import BACKOFF_MAX_S, STABLE_S, next_delay

    delays, failures = [], 0
    for _ in range(8):
        delay, failures = next_delay(failures, lived=1.0)
        delays.append(delay)
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == BACKOFF_MAX_S
    assert next_delay(failures, lived=STABLE_S)[0] == 0.5


def test_fleet_down_takes_only_fleet_programs_that_name_this_home(tmp_path: Path) -> None:
    from fleet.drivers.sweep import belongs

    home = tmp_path / "home"
    py = "/usr/bin/python3"
    assert belongs([py, "-m", "fleet", "master"], {"FLEET_HOME": str(home)}, home, None)
    assert belongs([py, "-m", "workers.main", "--node-id", "n"],
                   {"FLEET_REDIS_URL_FILE": str(home / "secrets" / "redis.url")}, home, None)
    assert belongs(["redis-server", f"{home}/redis/redis.conf"], {}, home, None)
    # a Redis retitles itself: known by its working folder or this fleet's port
    assert belongs(["redis-server 127.0.0.1:4242"], {}, home, None, cwd=home / "redis")
    assert belongs(["redis-server 127.0.0.1:4242"], {}, home, 4242)
    assert not belongs(["redis-server 127.0.0.1:4243"], {}, home, 4242, cwd=tmp_path)
    assert belongs([py, "-m", "fleet", "master"],
                   {"FLEET_REDIS_URL": "redis://:pw@127.0.0.1:4242/0"}, home, 4242)
    # a shell exporting FLEET_HOME, a `fleet jobs` in another terminal, another fleet: spared
    assert not belongs(["bash"], {"FLEET_HOME": str(home)}, home, None)
    assert not belongs([py, "-m", "fleet", "jobs"], {"FLEET_HOME": str(home)}, home, None)
    assert not belongs([py, "-m", "fleet", "master"], {"FLEET_HOME": str(tmp_path / "x")},
                       home, None)
    assert not belongs([py, "-m", "fleet", "master"],
                       {"FLEET_REDIS_URL": "redis://:pw@127.0.0.1:4243/0"}, home, 4242)
