"""Nothing lost, nothing run twice: each fault of DESIGN.md's invariants, for real.

Workers are SIGKILLed and SIGSTOPped, Redis is killed and restarted, masters are killed; the
jobs are real processes on real nodes, and the checks read what Redis recorded and what the
jobs themselves logged.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from fleet.store import keys, registry
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration


def spec(entrypoint: str, name: str = "f", cpus: float = 1, memory: str = "256Mi",
         **fields) -> dict:
    params = fields.pop("params", {})
    return {"name": name, "entrypoint": f"workers.jobs.synthetic:{entrypoint}",
            "resources": {"cpus": cpus, "memory": memory}, "params": params, **fields}


def steps(n: int, step_seconds: float = 0.3, faults: dict | None = None, **fields) -> dict:
    params = {"steps": n, "step_seconds": step_seconds, **(faults or {})}
    return spec("steps", name="steps", params=params, **fields)


def attempt_log(fleet: Fleet, job_id: str, attempt: int) -> str:
    path = fleet.settings.artifacts_dir / "jobs" / job_id / f"attempt-{attempt}" / "output.log"
    return path.read_text() if path.exists() else ""


def node_pid(fleet: Fleet, node: str) -> int:
    return fleet.nodes[node]


def no_reservations(fleet: Fleet) -> bool:
    return all(not s["alloc"] for s in registry.node_states(fleet.r))


def test_worker_killed_mid_job_resumes_on_another_node_from_checkpoint(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cores=[0])
    fleet.node("node-2", cores=[1])
    job_id = fleet.client.submit(steps(14))
    eventually(lambda: ((fleet.client.status(job_id).get("progress") or {}).get("step") or 0) >= 4,
               30, what="4 steps done")
    victim = fleet.client.status(job_id)["node"]
    fleet.kill(node_pid(fleet, victim))
    final = fleet.wait_job(job_id, 90)
    assert final["state"] == "SUCCEEDED"
    attempts = fleet.client.status(job_id)["attempts"]
    assert [a["end_reason"] for a in attempts] == ["NODE_LOST", "SUCCEEDED"]
    assert attempts[1]["node"] != victim
    assert attempts[1]["resumed_from_step"] >= 4
    assert final["result"]["resumed_from"] >= 4
    assert final["retries"] == 0 and final["infra_retries"] == 1  # not counted against the job
    assert "done" not in attempt_log(fleet, job_id, 1)
    assert attempt_log(fleet, job_id, 2).count("done") == 1
    assert no_reservations(fleet)


def test_jobs_queued_for_a_dead_node_run_elsewhere(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cores=[0])
    pid = node_pid(fleet, "node-1")
    os.kill(pid, signal.SIGSTOP)  # it stops consuming; its lease still holds a few seconds
    jobs = [fleet.client.submit(spec("noop", cpus=0.5)) for _ in range(2)]
    eventually(lambda: all(fleet.client.status(j)["state"] == "PLACED" for j in jobs), 10,
               what="both jobs queued on node-1")
    assert fleet.r.llen(keys.node_queue("node-1")) == 2
    fleet.node("node-2", cores=[1])
    fleet.kill(pid)
    for j in jobs:
        final = fleet.wait_job(j, 60)
        assert final["state"] == "SUCCEEDED" and final["node"] == "node-2"
        assert [a["end_reason"] for a in fleet.client.status(j)["attempts"]] == [
            "NODE_LOST", "SUCCEEDED"]
    assert fleet.r.llen(keys.node_queue("node-1")) == 0  # the dead node's queue was cleared


def test_job_longer_than_the_visibility_timeout_runs_once(fleet: Fleet) -> None:
    fleet.settings = fleet.settings.model_copy(update={"visibility_timeout": 2})
    fleet.driver.settings = fleet.settings
    fleet.master()
    fleet.node("node-1")
    job_id = fleet.client.submit(steps(8, step_seconds=1.0))
    final = fleet.wait_job(job_id, 90)
    assert final["state"] == "SUCCEEDED"
    assert len(fleet.client.status(job_id)["attempts"]) == 1
    assert attempt_log(fleet, job_id, 1).count("done") == 1
    # kombu did hand the unacknowledged message out again; fleet dropped the duplicate
    log = (fleet.driver.logs / "node-1.log").read_text()
    assert re.search(rf"dropping {job_id} attempt 1: job is (RUNNING|SUCCEEDED)", log), log[-3000:]


def test_a_node_that_comes_back_cannot_finish_its_superseded_attempt(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cores=[0])
    fleet.node("node-2", cores=[1])
    job_id = fleet.client.submit(steps(16, step_seconds=0.4))
    eventually(lambda: ((fleet.client.status(job_id).get("progress") or {}).get("step") or 0) >= 2,
               30, what="2 steps done")
    first = fleet.client.status(job_id)["node"]
    pid = node_pid(fleet, first)
    os.kill(pid, signal.SIGSTOP)  # a partition: the node and its job freeze, unseen
    eventually(lambda: fleet.client.status(job_id)["attempt"] == 2
               and fleet.client.status(job_id)["state"] == "RUNNING", 30,
               what="a second attempt elsewhere")
    os.kill(pid, signal.SIGCONT)  # it comes back and tries to go on with attempt 1
    final = fleet.wait_job(job_id, 90)
    assert final["state"] == "SUCCEEDED" and final["attempt"] == 2
    attempts = fleet.client.status(job_id)["attempts"]
    assert attempts[0]["end_reason"] == "NODE_LOST" and attempts[1]["end_reason"] == "SUCCEEDED"
    eventually(lambda: "superseded" in (fleet.driver.logs / f"{first}.log").read_text()
               or "done" not in attempt_log(fleet, job_id, 1), 20, what="the stale attempt to stop")
    assert "done" not in attempt_log(fleet, job_id, 1)
    assert no_reservations(fleet)


def test_oom_job_is_killed_alone_and_its_node_keeps_serving(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", memory="2Gi")
    job_id = fleet.client.submit(spec("hold_memory", memory="200Mi", max_retries=0,
                                      params={"mib": 700, "seconds": 20}))
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "FAILED" and final["reason"] == "OOM", final
    assert "OOM" in final["error"]
    assert fleet.client.status(job_id)["attempts"][0]["peak_memory"] > 200 * 2**20
    after = fleet.client.submit(spec("noop"))
    assert fleet.wait_job(after, 30)["state"] == "SUCCEEDED"
    assert fleet.driver.procs[node_pid(fleet, "node-1")].poll() is None


@pytest.mark.parametrize("poison", [
    steps(3, step_seconds=0.1, max_retries=1, faults={"crash_at": 1, "every_attempt": True}),
    spec("hold_memory", memory="150Mi", max_retries=1, params={"mib": 500, "seconds": 10}),
], ids=["crashes", "ooms"])
def test_a_poison_job_ends_failed_after_its_retries(fleet: Fleet, poison: dict) -> None:
    fleet.master()
    fleet.node("node-1")
    job_id = fleet.client.submit(poison)
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "FAILED"
    attempts = fleet.client.status(job_id)["attempts"]
    assert len(attempts) == 2 and all(a["counted"] for a in attempts)
    assert final["retries"] == 2


def test_cancel_a_pending_job_at_once_and_a_running_one_within_5s(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1)
    running = fleet.client.submit(spec("sleep", params={"seconds": 60, "steps": 60}))
    fleet.wait_state(running, "RUNNING")
    pending = fleet.client.submit(spec("noop"))
    fleet.wait_state(pending, "PENDING")
    assert fleet.client.cancel(pending) == "CANCELLED"
    assert fleet.client.status(pending)["state"] == "CANCELLED"
    job_pid = eventually(lambda: next((j["pid"] for n in fleet.client.nodes()
                                       for j in n["jobs"] if j["job"] == running), None),
                         10, what="the job's pid")
    t0 = time.monotonic()
    fleet.client.cancel(running)
    final = fleet.wait_job(running, 10)
    took = time.monotonic() - t0
    assert final["state"] == "CANCELLED" and final["reason"] == "CANCELLED"
    assert took < 5, f"cancel took {took:.1f}s"
    assert not Path(f"/proc/{job_pid}").exists() or _zombie(job_pid)
    assert no_reservations(fleet)


def test_timeout_and_stall_end_the_attempt(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=2, cores=[0, 1])
    timed = fleet.client.submit(spec("sleep", timeout=2, params={"seconds": 60, "steps": 60}))
    stalled = fleet.client.submit(spec("sleep", stall_timeout=2, max_retries=0,
                                       params={"seconds": 60, "steps": 1}))
    t = fleet.wait_job(timed, 30)
    assert (t["state"], t["reason"]) == ("FAILED", "TIMEOUT")
    assert len(fleet.client.status(timed)["attempts"]) == 1  # a timeout is final
    s = fleet.wait_job(stalled, 30)
    assert (s["state"], s["reason"]) == ("FAILED", "STALLED")


def test_redis_restart_mid_run_loses_nothing_and_workers_consume_again(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=2, cores=[0])
    fleet.node("node-2", cpus=2, cores=[1])
    jobs = [fleet.client.submit(steps(8, cpus=0.5)) for _ in range(6)]
    eventually(lambda: sum(fleet.client.status(j)["state"] == "RUNNING" for j in jobs) >= 2, 30,
               what="jobs running")
    fleet.server.kill()
    time.sleep(2)
    fleet.server.start()
    for j in jobs:
        assert fleet.wait_job(j, 120)["state"] == "SUCCEEDED"
    t0 = time.monotonic()
    after = fleet.client.submit(spec("noop"))
    assert fleet.wait_job(after, 30)["state"] == "SUCCEEDED"
    print(f"a job submitted after the restart ran within {time.monotonic() - t0:.1f}s")
    assert no_reservations(fleet)
    # the same worker processes served on: none died on the reconnect (celery#8030 family)
    assert all(fleet.driver.procs[pid].poll() is None for pid in fleet.nodes.values())


def test_master_failover_places_in_flight_jobs_exactly_once(fleet: Fleet) -> None:
    leader = fleet.master()
    eventually(lambda: fleet.r.get(keys.MASTER_LEASE), 10, what="a leader")
    fleet.master()  # standby
    fleet.node("node-1", cpus=4, cores=[0, 1])
    jobs = [fleet.client.submit(spec("noop", cpus=0.5)) for _ in range(20)]
    fleet.kill(leader)
    t0 = time.monotonic()
    for j in jobs:
        final = fleet.wait_job(j, 60)
        assert final["state"] == "SUCCEEDED"
        attempts = fleet.client.status(j)["attempts"]
        assert [a["end_reason"] for a in attempts] == ["SUCCEEDED"]
    late = fleet.client.submit(spec("noop"))
    assert fleet.wait_job(late, 30)["state"] == "SUCCEEDED"
    print(f"all placed and done {time.monotonic() - t0:.1f}s after the leader died")


def test_a_worker_restarted_with_the_same_node_id_does_not_inherit_jobs(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    old = node_pid(fleet, "node-1")
    old_inc = fleet.client.nodes()[0]["incarnation"]
    os.kill(old, signal.SIGSTOP)
    job_id = fleet.client.submit(spec("noop"))
    fleet.wait_state(job_id, "PLACED")
    fleet.kill(old)
    fleet.node("node-1")  # same id, new incarnation
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "SUCCEEDED"
    attempts = fleet.client.status(job_id)["attempts"]
    assert attempts[0]["incarnation"] == old_inc and attempts[0]["end_reason"] == "NODE_LOST"
    assert attempts[-1]["incarnation"] != old_inc


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_second_live_worker_with_a_taken_node_id_refuses_to_start(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    twin = fleet.node("node-1", wait=False)
    proc = fleet.driver.procs[twin]
    assert proc.wait(30) == 2  # it gave up after one heartbeat TTL
    log = (fleet.driver.logs / "node-1.log").read_text()
    assert "held by another live worker" in log
    job_id = fleet.client.submit(spec("noop"))
    assert fleet.wait_job(job_id, 30)["state"] == "SUCCEEDED"  # the first one serves on
