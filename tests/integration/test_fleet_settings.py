"""The fleet's settings reach every node and producer from the store, not from their environment.

The operator's master runs with FLEET_ALLOWLIST naming a module; the nodes and the producer are
started without it. The producer's submit is checked against the published list, and the nodes
run what it accepted. Redis itself refuses a producer's write of the settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from fleet.client import Client
from fleet.drivers.local import LocalDriver
from fleet.errors import SpecError
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import read_state
from fleet.store import keys
from tests.integration.support import REPO, Fleet, eventually
from tests.integration.test_producer import allowed, any_fleet  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

MODULE = "tests.integration.fencing_job"


def test_nodes_and_producers_check_jobs_against_the_operators_published_settings(
        fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.settings.allowlist == ["workers.jobs"]  # the nodes' and the producer's own
    operator = fleet.settings.model_copy(update={"allowlist": ["workers.jobs", MODULE]})
    master = LocalDriver(operator)
    master.start_master(fleet.server.url)
    fleet.driver.procs.update(master.procs)  # stopped with the fleet
    fleet.node("node-1")
    eventually(lambda: MODULE in json.loads(fleet.r.get(keys.SETTINGS) or "{}").get(
        "allowlist", []), 30, what="the master to publish its settings")

    producer = Client(Settings(home=tmp_path / "producer"),
                      client=redis.Redis.from_url(fleet.server.producer_url or ""))
    job = producer.submit({"name": "theirs", "entrypoint": f"{MODULE}:witnessed_steps",
                           "params": {"log": str(tmp_path / "steps.log"), "steps": 2,
                                      "step_seconds": 0.01}})
    final = producer.wait(job, timeout=90)
    assert final["state"] == "SUCCEEDED", final
    with pytest.raises(SpecError) as info:
        producer.submit({"name": "not-allowed", "entrypoint": "tests.integration.procscan:scan"})
    message = str(info.value)
    assert "'tests.integration.procscan' is not on the allowlist" in message
    assert MODULE in message and "\n" not in message


def test_a_producer_may_read_the_published_settings_and_never_write_them(
        any_fleet: Fleet) -> None:  # noqa: F811 (test_producer's: Valkey, and Redis 7)
    fleet = any_fleet
    fleet.master()
    eventually(lambda: fleet.r.get(keys.SETTINGS), 30, what="the settings to be published")
    producer = redis.Redis.from_url(fleet.server.producer_url or "")
    before = fleet.r.get(keys.SETTINGS)
    assert producer.get(keys.SETTINGS) == before
    forged = json.dumps({"allowlist": ["os"]})
    writes = {
        "SET": lambda: producer.set(keys.SETTINGS, forged),
        "DEL": lambda: producer.delete(keys.SETTINGS),
        "APPEND": lambda: producer.append(keys.SETTINGS, "x"),
        "RENAME": lambda: producer.rename(keys.SETTINGS, "fleet:intake:default"),
    }
    assert [what for what, attempt in writes.items() if allowed(attempt)] == []
    assert fleet.r.get(keys.SETTINGS) == before


def test_fleet_up_publishes_the_operators_allowlist_for_a_producer_without_it(
        tmp_path: Path) -> None:
    """The issue's steps 1-3 on the command line: the operator's comma-separated FLEET_ALLOWLIST
    at `fleet up`; a producer's `fleet submit` without it is accepted and runs on the nodes."""
    home = tmp_path / "home"
    base = {k: v for k, v in os.environ.items()
            if k not in SECRET_ENV and not k.startswith("FLEET_")}
    path = os.environ.get("PYTHONPATH")
    base.update({"FLEET_HOME": str(home), "FLEET_HEARTBEAT_INTERVAL": "0.5",
                 "FLEET_HEARTBEAT_TTL": "3",
                 "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)})
    fleet = [sys.executable, "-m", "fleet"]
    operator = {**base, "FLEET_ALLOWLIST": f"workers.jobs,{MODULE}"}
    up = subprocess.run([*fleet, "up", "--detach", "--workers", "1", "--no-flower"],
                        env=operator, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        state = read_state(Settings(home=home))
        producer = {**base, "FLEET_REDIS_URL": state.get("producer_url") or state["redis_url"]}
        spec = tmp_path / "theirs.yaml"
        spec.write_text(f"name: theirs\nentrypoint: {MODULE}:witnessed_steps\n"
                        f"params: {{log: {tmp_path / 'steps.log'}, steps: 2, step_seconds: 0.01}}\n")
        done = subprocess.run([*fleet, "submit", str(spec), "--wait"], env=producer,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and "SUCCEEDED" in done.stdout, done.stdout + done.stderr
        spec.write_text("name: other\nentrypoint: tests.integration.procscan:scan\n")
        refused = subprocess.run([*fleet, "submit", str(spec)], env=producer,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert "not on the allowlist" in refused.stderr and MODULE in refused.stderr
    finally:
        subprocess.run([*fleet, "down"], env=base, capture_output=True, timeout=120)
