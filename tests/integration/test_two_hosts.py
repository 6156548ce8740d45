"""Two hosts for real: worker nodes on a second host (tests/hosts.py: a network namespace of its
own behind a veth pair, a filesystem of its own) join the fleet over TCP to the first host's
Redis, with TLS and its password, and the link between the hosts is cut.

The master, Redis and the first host's nodes run here; the second host's nodes reach Redis at
the first host's veth address only, from a URL in a 0600 file on their own disk (the fixtures
are in two_hosts.py). Every path is the same on both hosts (FLEET_HOME, the jobs' witness log),
every file is not: the test reads each host's disk from outside, as an operator would read two
machines'.

These fleets have no object store: checkpoints and outputs stay on the disk of the host that
made them. What holds without one is tested here (one completion, attempts fenced apart);
test_two_hosts_storage.py gives the same two hosts the embedded S3 and resumes across them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.settings import Settings
from tests.integration import two_hosts
from tests.integration.support import Fleet, eventually
from tests.integration.two_hosts import (
    ALLOWLIST,
    ENTRYPOINT,
    PARTITION_S,
    Host2,
    far_clients,
    overlap,
    read_lines,
    steps_of,
    witness,
)

pytestmark = pytest.mark.integration
# the fixtures of two_hosts.py, registered in this module
second_host, redis_server, host2 = two_hosts.second_host, two_hosts.redis_server, two_hosts.host2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"allowlist": ALLOWLIST})


# -- tests ---------------------------------------------------------------------------------------
def test_a_node_on_the_second_host_joins_over_tls_and_runs_a_job(
    fleet: Fleet, host2: Host2
) -> None:
    fleet.master()
    host2.node("far-1", cores=[0])
    listed = fleet.cli("nodes", check=True).stdout
    assert "far-1" in listed, listed
    assert far_clients(fleet, host2), "no connection from the second host's address"
    assert {n["node"]: n for n in fleet.client.nodes()}["far-1"]["host"] == host2.host.ns
    job_id = fleet.client.submit({"name": "far", "entrypoint": "workers.jobs.synthetic:noop"})
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "SUCCEEDED" and final["node"] == "far-1", final
    # the same paths, two disks: each host has its own URL file, its own node log
    first_url = fleet.settings.home_dir / "secrets" / "redis.url"
    assert (host2.home / "secrets" / "redis.url").read_text().strip() == host2.url
    assert host2.host.address not in (first_url.read_text() if first_url.exists() else "")
    assert (host2.home / "logs" / "far-1.log").exists()
    assert not (fleet.settings.home_dir / "logs" / "far-1.log").exists()
    # what a job makes stays on the disk of the host it ran on: without a store both reach
    # (issue 17's S3), the first host cannot hand it out, and says so on one line
    made = fleet.client.submit({"name": "model",
                                "entrypoint": "tests.integration.hosts_job:writes_output"})
    assert fleet.wait_job(made, 60)["state"] == "SUCCEEDED"
    assert [p.name for p in host2.home.rglob("model.txt")] == ["model.txt"]
    assert not list(fleet.settings.home_dir.rglob("model.txt"))
    got = fleet.cli("artifacts", made, "--output", str(fleet.settings.home_dir.parent / "dl"))
    assert got.returncode != 0 and "no artifact store" in got.stderr, got


def test_a_job_whose_second_host_node_is_killed_ends_once_on_the_first(
    fleet: Fleet, host2: Host2, tmp_path: Path
) -> None:
    log, far_log = witness(host2, tmp_path)
    fleet.master()
    far = host2.node("far-1", cores=[0])
    job_id = fleet.client.submit({
        "name": "killed", "entrypoint": ENTRYPOINT, "max_retries": 0,
        "resources": {"cpus": 1, "memory": "256Mi"},
        "params": {"log": str(log), "steps": 40, "step_seconds": 0.2}})
    eventually(lambda: len(steps_of(read_lines(far_log), 1)) >= 4, 60, what="4 steps there")
    fleet.node("near-1", cores=[1])
    killed_at = time.time()
    fleet.kill(far)  # not a child of this process: nothing to reap
    final = fleet.wait_job(job_id, 90)
    time.sleep(2)  # a job left running on the second host would write again by now
    attempts = fleet.client.status(job_id)["attempts"]
    far_lines, near_lines = read_lines(far_log), read_lines(log)
    print(f"killed -> attempt 2's first step "
          f"{min(steps_of(near_lines, 2)) - killed_at:.2f} s; attempts "
          f"{[(a['node'], a['end_reason']) for a in attempts]}")
    assert final["state"] == "SUCCEEDED", final
    assert [(a["node"], a["end_reason"]) for a in attempts] == [
        ("far-1", "NODE_LOST"), ("near-1", "SUCCEEDED")]
    assert {x["attempt"] for x in far_lines} == {1} and {x["attempt"] for x in near_lines} == {2}
    assert sum(x.get("event") == "done" for x in far_lines + near_lines) == 1
    assert max(steps_of(far_lines, 1)) < attempts[0]["ended_at"] < min(steps_of(near_lines, 2))


def test_a_partitioned_second_host_fences_its_job_and_rejoins(
    fleet: Fleet, host2: Host2, tmp_path: Path
) -> None:
    log, far_log = witness(host2, tmp_path)
    began = time.time()
    fleet.master()
    host2.node("far-1", cores=[0])
    job_id = fleet.client.submit({
        "name": "partitioned", "entrypoint": ENTRYPOINT, "max_retries": 0,
        "resources": {"cpus": 1, "memory": "256Mi"},
        "params": {"log": str(log), "steps": 100, "step_seconds": 0.25}})
    eventually(lambda: len(steps_of(read_lines(far_log), 1)) >= 4, 60, what="4 steps there")
    fleet.node("near-1", cores=[1])
    before = {n["node"]: n for n in fleet.client.nodes()}["far-1"]
    cut_at = time.time()
    host2.host.cut()
    try:
        eventually(lambda: steps_of(read_lines(log), 2), PARTITION_S,
                   what="the job re-placed on the first host")
        replaced_at = time.time()
        time.sleep(max(0.0, cut_at + PARTITION_S - time.time()))
    finally:
        host2.host.mend()
    mended_at = time.time()
    back = eventually(lambda: {n["node"]: n for n in fleet.client.nodes()}.get("far-1"), 30,
                      what="far-1 back after the partition")
    rejoined_at = time.time()
    final = fleet.wait_job(job_id, 60)
    time.sleep(3)  # a stale attempt that was not stopped would write again by now
    attempts = fleet.client.status(job_id)["attempts"]
    far_lines, near_lines = read_lines(far_log), read_lines(log)
    far_steps, near_steps = steps_of(far_lines, 1), steps_of(near_lines, 2)
    overlapped = overlap(far_steps, near_steps)
    resumed = [x["resumed"] for x in near_lines if x.get("event") == "start"]
    print(f"link down -> last step there (self-fenced) {max(far_steps) - cut_at:+.2f} s; "
          f"-> attempt 1 ended by the master {attempts[0]['ended_at'] - cut_at:+.2f} s; "
          f"-> first step here {min(near_steps) - cut_at:+.2f} s (seen {replaced_at - cut_at:.2f}"
          f" s); link up -> far-1 heartbeats {rejoined_at - mended_at:.2f} s; overlap "
          f"{overlapped:.3f} s; attempt 2 resumed from {resumed}, attempt 1 had committed step "
          f"{attempts[0].get('committed_step')} on its host's disk; incarnation "
          f"{before['incarnation']} -> {back['incarnation']}; total {time.time() - began:.1f} s")
    assert final["state"] == "SUCCEEDED", final
    assert [(a["node"], a["end_reason"]) for a in attempts] == [
        ("far-1", "NODE_LOST"), ("near-1", "SUCCEEDED")]
    # self-fencing: the second host's job stopped before its lease could have ended
    assert max(far_steps) < cut_at + fleet.settings.heartbeat_ttl
    assert max(far_steps) < attempts[0]["ended_at"] < min(near_steps)
    assert overlapped == 0.0
    assert {x["attempt"] for x in far_lines} == {1} and {x["attempt"] for x in near_lines} == {2}
    assert sum(x.get("event") == "done" for x in far_lines + near_lines) == 1
    # rejoined over the mended link as a new incarnation, holding nothing of the job it lost
    assert far_clients(fleet, host2)
    assert back["incarnation"] != before["incarnation"]
    assert back["jobs"] == [] and not back["reserved"].get("cpus"), back
