"""The dispatch path made cheap (issue 7) keeps its promises: what a short job reports is
recorded with its outcome, and a long blocked head of the line does not keep a job that fits
from running. Real Redis, master and worker processes.
"""

from __future__ import annotations

import pytest

from fleet import keys
from fleet.master import PENDING_WINDOW
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
