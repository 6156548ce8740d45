"""`fleet explain JOB` says why a job waits, and how a placed one was chosen.

Real Redis, master and worker nodes; the real `fleet` command line.
"""

from __future__ import annotations

import json

from fleet.client import NOT_ACCEPTED
from tests.integration.support import eventually

MI = 2**20


def _hold(mib: int, seconds: float, memory: str) -> dict:
    return {
        "name": "hold",
        "entrypoint": "workers.jobs.synthetic:hold_memory",
        "params": {"mib": mib, "seconds": seconds},
        "resources": {"cpus": 0.25, "memory": memory},
    }


def test_explain_gives_the_reason_a_job_waits_and_the_scores_of_a_placed_one(fleet):
    fleet.master()
    fleet.node("node-1", cpus=1, memory="1Gi")
    fleet.node("node-2", cpus=1, memory="512Mi")

    # 800Mi fits node-1 only; once it runs there, a second 800Mi job fits nowhere.
    first = fleet.client.submit(_hold(600, 60, "800Mi"))
    fleet.wait_state(first, "RUNNING")
    second = fleet.client.submit(_hold(600, 1, "800Mi"))
    waiting = eventually(lambda: (w := fleet.client.status(second).get("waiting")) != NOT_ACCEPTED
                         and w, 30, what="a reason for the waiting job")

    # Pending: the reason names the resource short, how much is free at best, and where.
    text = fleet.cli("explain", second)
    assert text.returncode == 0, text.stderr
    assert second in text.stdout and "waits" in text.stdout
    assert "needs 800Mi memory" in text.stdout
    assert "largest free is 512Mi on node-2" in text.stdout
    doc = json.loads(fleet.cli("explain", second, "--json", check=True).stdout)
    assert doc["state"] == "PENDING" and doc["node"] is None and doc["placement"] is None
    assert "memory" in doc["waiting"] and doc["waiting"] == waiting
    assert doc["waiting"].startswith("#1 in line: ")  # its place in the pending queue

    # Placed: every candidate with its verdict; the chosen node has the best score.
    doc = json.loads(fleet.cli("explain", first, "--json", check=True).stdout)
    placement = doc["placement"]
    assert doc["node"] == placement["node"] == "node-1"
    assert placement["policy"] == "spread" and placement["nodes"] == 2
    by_node = {c["node"]: c for c in placement["candidates"]}
    assert by_node["node-1"]["feasible"] and by_node["node-1"]["score"] is not None
    assert not by_node["node-2"]["feasible"] and by_node["node-2"]["score"] is None
    assert "800Mi memory" in by_node["node-2"]["why_not"]
    assert by_node["node-1"]["free"]["memory"] == 1024 * MI  # the view it was chosen on
    text = fleet.cli("explain", first)
    assert text.returncode == 0, text.stderr
    assert "spread chose node-1" in text.stdout
    assert "score=" in text.stdout and "did not fit: node-2" in text.stdout

    # Capacity frees: the waiting job is placed and its explanation turns into scores.
    fleet.client.cancel(first)
    assert fleet.wait_job(second, timeout=60)["state"] == "SUCCEEDED"
    doc = json.loads(fleet.cli("explain", second, "--json", check=True).stdout)
    assert doc["waiting"] is None and doc["placement"]["node"] == "node-1"
