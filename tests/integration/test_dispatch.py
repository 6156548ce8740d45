"""The cheap dispatch path keeps its promises: what a short job reports is
recorded with its outcome, and a long blocked head of the line does not keep a job that fits
from running. Real Redis, master and worker processes.
"""

from __future__ import annotations

import time

import pytest

from fleet.broker import make_app
from fleet.client import Client
from fleet.drivers.redis_server import RedisServer
from fleet.master.loop import PENDING_WINDOW, Master
from fleet.settings import Settings
from fleet.store import keys, registry
from tests.integration.support import Fleet

pytestmark = pytest.mark.integration


def job(entrypoint: str, cpus: float = 0.25, memory: str = "64Mi", **params) -> dict:
    return {"name": "d", "entrypoint": f"workers.jobs.synthetic:{entrypoint}",
            "resources": {"cpus": cpus, "memory": memory}, "params": params}


def test_a_short_jobs_last_progress_is_recorded_with_its_outcome(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    ids = [fleet.client.submit(job("noop")) for _ in range(5)]
    for job_id in ids:
        final = fleet.wait_job(job_id, 60)
        assert final["state"] == "SUCCEEDED"
        assert final["progress"]["step"] == 1 and final["progress"]["attempt"] == 1
        assert [m["step"] for m in fleet.client.metrics(job_id)] == [1]
        assert fleet.client.status(job_id)["attempts"][0]["peak_memory"] > 0


def test_a_job_that_fits_runs_past_a_long_blocked_head_of_the_line(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, memory="1Gi")
    holder = fleet.client.submit(job("sleep", memory="700Mi", seconds=60, steps=60))
    fleet.wait_state(holder, "RUNNING")
    # More jobs than the master reads at once, none of which fits while the holder runs...
    blocked = [fleet.client.submit(job("noop", memory="700Mi"))
               for _ in range(PENDING_WINDOW + 5)]
    # ...and behind them all, one that does.
    small = fleet.client.submit(job("noop"))
    assert fleet.wait_job(small, 60)["state"] == "SUCCEEDED"
    assert fleet.r.zcard(keys.PENDING) == len(blocked)
    fleet.client.cancel(holder)
    assert fleet.wait_job(holder, 30)["state"] == "CANCELLED"
    for job_id in blocked:
        fleet.client.cancel(job_id)


def test_the_master_publishes_without_subscribing_to_results(
    settings: Settings, redis_server: RedisServer
) -> None:
    """A master in this process places a job on a node (a report written here): the task is on
    the node's queue, and the master subscribed to nothing (Celery would subscribe to the
    task's result channel, and unsubscribe at once: two commands a job for nothing)."""
    r = redis_server.client()
    registry.heartbeat(r, {"node": "node-1", "incarnation": "i",
                           "capacity": {"cpus": 2, "memory": 2**30}}, ttl=60)
    job_id = Client(settings).submit(job("noop"))
    app = make_app(settings, redis_server.url)
    r.config_resetstat()
    report = Master(settings, r, app).step(time.time())

    assert report is not None and report.placed == [(job_id, "node-1")]
    assert r.llen(keys.node_queue("node-1")) == 1
    commands = r.info("commandstats")
    assert "cmdstat_subscribe" not in commands and "cmdstat_unsubscribe" not in commands
