"""`fleet up`, `fleet scale` and `fleet down` through the real CLI and the local driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.client import Client
from fleet.settings import Settings
from fleet.statefile import read_state
from tests.integration.support import eventually

pytestmark = pytest.mark.integration


class CLI:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "FLEET_HOME": str(home), "FLEET_HEARTBEAT_INTERVAL": "0.5",
                    "FLEET_HEARTBEAT_TTL": "3"}
        self.env.pop("FLEET_REDIS_URL", None)
        self.settings = Settings(home=home)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "fleet", *args], env=self.env, text=True,
                             capture_output=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out

    def live_nodes(self) -> set[str]:
        return {n["node"] for n in json.loads(self("nodes", "--json").stdout)}


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    c = CLI(tmp_path / "home")
    c("up", "--detach", "--workers", "2", "--cpus", "1", "--memory", "1Gi", "--no-flower")
    try:
        yield c
    finally:
        subprocess.run([sys.executable, "-m", "fleet", "down"], env=c.env, timeout=120)


def test_scale_up_then_down_drains_running_jobs(cli: CLI) -> None:
    assert cli.live_nodes() == {"node-1", "node-2"}
    t0 = time.monotonic()
    cli("scale", "worker=4")
    eventually(lambda: cli.live_nodes() == {f"node-{i}" for i in range(1, 5)}, 30,
               what="4 heartbeating nodes")
    print(f"scale 2 -> 4: 4 nodes heartbeating after {time.monotonic() - t0:.2f}s")

    client = Client(cli.settings)
    spec = {"name": "drain", "entrypoint": "workers.jobs.synthetic:sleep",
            "resources": {"cpus": 1, "memory": "256Mi"}, "params": {"seconds": 6, "steps": 6}}
    jobs = [client.submit(spec) for _ in range(4)]
    eventually(lambda: all(client.status(j)["state"] == "RUNNING" for j in jobs), 60,
               what="4 jobs running, one per node")
    nodes_of = {j: client.status(j)["node"] for j in jobs}
    assert len(set(nodes_of.values())) == 4

    out = cli("scale", "worker=1")
    draining = out.stdout.split("draining:")[1].strip().split(", ")
    assert len(draining) == 3
    state = read_state(cli.settings)
    assert state is not None
    pids = {n: state["pids"]["nodes"][n] for n in draining}
    for job in jobs:  # every job, on removed nodes too, runs to its end
        assert client.wait(job, timeout=60)["state"] == "SUCCEEDED"
    removed_jobs_end = max(client.status(j)["finished_at"] for j in jobs
                           if nodes_of[j] in draining)
    eventually(lambda: cli.live_nodes() == set({"node-1", "node-2", "node-3", "node-4"})
               - set(draining), 30, what="drained nodes to leave")
    for node, pid in pids.items():
        eventually(lambda pid=pid: not _running(pid), 30, what=f"{node} to exit")
    assert time.time() >= removed_jobs_end


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
