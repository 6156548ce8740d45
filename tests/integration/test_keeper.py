"""`fleet up` supervises what it started, `fleet down` stops everything of the fleet and leaves
nothing behind. Real CLI, real processes, FLEET_HOME in a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.client import Client
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import read_state
from fleet.store import keys
from tests.integration.procscan import read_proc
from tests.integration.support import eventually

pytestmark = pytest.mark.integration

FLEET = [sys.executable, "-m", "fleet"]


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.pop("FLEET_REDIS_URL_FILE", None)
    return {**env, "FLEET_HOME": str(home), "FLEET_HEARTBEAT_INTERVAL": "0.5",
            "FLEET_HEARTBEAT_TTL": "3"}


def fleet(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEET, *args], env=env_for(home), capture_output=True, text=True,
                          timeout=timeout, cwd=home.parent)


def processes_naming(home: Path) -> list[str]:
    """Every process whose command line or environment names `home` (never this test's)."""
    mine = str(os.getpid())
    return [f"{pid}: {rec['cmdline']!r}" for pid, rec in read_proc().items()
            if pid != mine and any(str(home) in (rec.get(f) or "") for f in ("cmdline", "environ"))]


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:  # still starting
        return False


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    fleet(home, "down", timeout=120)


def test_a_sigkilled_master_is_back_within_10s_and_no_job_is_lost(home: Path) -> None:
    up = fleet(home, "up", "--detach", "--workers", "2", "--memory", "1Gi", "--no-flower")
    assert up.returncode == 0, up.stderr
    settings = Settings(home=home)
    client = Client(settings)
    jobs = [client.submit({"name": f"j{i}", "entrypoint": "workers.jobs.synthetic:sleep",
                           "params": {"seconds": 2, "steps": 4}}) for i in range(8)]
    eventually(lambda: any(client.status(j)["state"] == "RUNNING" for j in jobs), 60,
               what="a running job")
    state = read_state(settings)
    assert state is not None
    old_master, leader = state["pids"]["master"], client.r.get(keys.MASTER_LEASE)
    assert leader
    os.kill(old_master, signal.SIGKILL)
    killed = time.monotonic()

    def new_leader() -> Any:
        pid = (read_state(settings) or {}).get("pids", {}).get("master")
        holder = client.r.get(keys.MASTER_LEASE)
        return pid != old_master and Path(f"/proc/{pid}").exists() and holder not in (None, leader)

    eventually(new_leader, 10, what="a new master leading")
    back = time.monotonic() - killed
    print(f"a new master held the lease {back:.1f} s after the SIGKILL")
    # submitted while the old master was dead or just after: not lost either
    jobs.append(client.submit({"name": "after", "entrypoint": "workers.jobs.synthetic:noop"}))
    for job in jobs:
        final = client.wait(job, timeout=120)
        assert final["state"] == "SUCCEEDED", final
        succeeded = [a for a in final["attempts"] if a.get("end_reason") == "SUCCEEDED"]
        assert len(succeeded) == 1, final["attempts"]  # ended once, by one attempt
    keeper_log = (home / "logs" / "keeper.log").read_text()
    assert f"master (pid {old_master}) died" in keeper_log

    down = fleet(home, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert processes_naming(home) == []


def test_a_sigkilled_redis_is_restarted_on_its_aof_and_the_fleet_serves_on(home: Path) -> None:
    up = fleet(home, "up", "--detach", "--workers", "1", "--memory", "1Gi", "--no-flower")
    assert up.returncode == 0, up.stderr
    settings = Settings(home=home)
    client = Client(settings)
    before = client.submit({"name": "before", "entrypoint": "workers.jobs.synthetic:noop"})
    assert client.wait(before, timeout=60)["state"] == "SUCCEEDED"
    state = read_state(settings) or {}
    os.kill(state["pids"]["redis"], signal.SIGKILL)
    eventually(lambda: _answers(state["redis_url"]), 10, what="Redis back")
    eventually(lambda: (read_state(settings) or {})["pids"]["redis"] != state["pids"]["redis"],
               5, what="the new Redis pid recorded")
    client = Client(settings)
    assert client.status(before)["state"] == "SUCCEEDED"  # from the append-only file
    after = client.submit({"name": "after", "entrypoint": "workers.jobs.synthetic:noop"})
    assert client.wait(after, timeout=90)["state"] == "SUCCEEDED"


def test_fleet_down_stops_processes_no_state_file_recorded(home: Path) -> None:
    """A Redis restarted by hand and a master started with `fleet master`, after the
    keeper itself was killed, are not in the state file; `fleet down` stops them too."""
    from fleet.drivers.redis_server import find_redis_server

    up = fleet(home, "up", "--detach", "--workers", "1", "--memory", "1Gi", "--no-flower")
    assert up.returncode == 0, up.stderr
    pids = (read_state(Settings(home=home)) or {})["pids"]
    for name in ("keeper", "redis"):
        os.kill(pids[name], signal.SIGKILL)
    hand = [subprocess.Popen([find_redis_server(), str(home / "redis" / "redis.conf")],
                             start_new_session=True, stdout=subprocess.DEVNULL),
            subprocess.Popen([*FLEET, "master"], env=env_for(home), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        url = (read_state(Settings(home=home)) or {})["redis_url"]
        eventually(lambda: _answers(url), 10, what="the hand-started Redis")
        assert all(p.poll() is None for p in hand)
        down = fleet(home, "down", timeout=120)
        assert down.returncode == 0, down.stderr
        for p in hand:
            assert p.wait(10) is not None
        assert processes_naming(home) == []
    finally:
        for p in hand:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_two_fleet_up_at_once_the_second_fails_at_once_in_one_line(home: Path) -> None:
    argv = [*FLEET, "up", "--detach", "--workers", "1", "--memory", "1Gi", "--no-flower"]
    procs = [subprocess.Popen(argv, env=env_for(home), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=home.parent)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outs
    err = next(e for p, (_, e) in zip(procs, outs, strict=True) if p.returncode != 0).strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "a fleet is starting or running here" in err, err
    assert fleet(home, "nodes", "--json").returncode == 0  # the first one is whole
    again = fleet(home, "up", "--detach", "--workers", "1")
    assert again.returncode != 0 and "running here" in again.stderr, again.stderr


def test_a_redis_that_cannot_start_says_why(home: Path) -> None:
    """A corrupt append-only file: redis-server exits 1; `fleet up` shows its log's last lines."""
    redis_dir = home / "redis"
    (redis_dir / "appendonlydir").mkdir(parents=True)
    (redis_dir / "appendonly.aof").write_text("*3\r\n$3\r\nSET\r\ngarbage")
    (redis_dir / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
    out = fleet(home, "up", "--detach", "--workers", "1", "--no-flower", timeout=120)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "exited with code" in err and "its log" in err, err
    assert read_state(Settings(home=home)) is None  # nothing half-up left behind
    assert processes_naming(home) == []
