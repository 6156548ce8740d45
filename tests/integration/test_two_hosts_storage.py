"""Two hosts and the embedded S3: a job's checkpoints follow it from the second host to the first.

The fleet of test_two_hosts.py (two_hosts.py: a second host in a network namespace of its own,
with a filesystem of its own, joined over TLS to the first host's Redis) plus a real SeaweedFS
S3 server on the first host, listening on its veth address only, so both hosts reach it at the
one endpoint the fleet publishes. The first host's nodes get FLEET_STORAGE and
FLEET_S3_ENDPOINT in their settings; the second host's nodes get neither and read both from
Redis, as a node on another machine would. Each host has the S3 credentials in a 0600 file on
its own disk (the operator copies it over). Nothing else is shared: a checkpoint that reaches
the first host came through S3.

Each test reads the jobs' own witness (tests/integration/fencing_job.py: one line per step with
attempt, time and host, written by the job outside fleet) from both disks.
"""

from __future__ import annotations

import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.drivers.s3_server import S3Server
from fleet.settings import Settings
from fleet.storage.manifest import MANIFEST
from fleet.storage.s3 import S3Storage
from tests.hosts import SecondHost
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
def s3(tmp_path: Path, second_host: SecondHost) -> Iterator[S3Server]:
    """The embedded S3 on the first host's veth address: the second host's nodes reach it over
    the link; the first host's reach the same address locally (it stays up while cut)."""
    server = S3Server(tmp_path / "s3", host=second_host.address).start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, s3: S3Server) -> Settings:
    return settings.model_copy(update={
        "allowlist": ALLOWLIST, "storage": f"s3://{s3.bucket}/run-{secrets.token_hex(3)}",
        "s3_endpoint": s3.endpoint, "s3_credentials_file": s3.credentials_file})


def store(fleet: Fleet, s3: S3Server) -> S3Storage:
    prefix = (fleet.settings.storage or "").removeprefix(f"s3://{s3.bucket}/")
    return s3.storage(prefix.rstrip("/") + "/")


def uploaded_steps(storage: S3Storage, job_id: str, attempt: int) -> set[int]:
    """The steps of an attempt's complete checkpoints in S3 (fleet.storage.layout: each
    `jobs/<job>/checkpoints/attempt-<n>/step-<s>/`, its manifest written last)."""
    base = f"jobs/{job_id}/checkpoints/attempt-{attempt}/"
    return {int(o.key[len(base):].split("/")[0].removeprefix("step-"))
            for o in storage.list(base) if o.key.endswith(f"/{MANIFEST}")}


def job_spec(log: Path, steps: int, step_seconds: float, cpus: float) -> dict[str, Any]:
    return {"name": "far", "entrypoint": ENTRYPOINT, "max_retries": 0,
            "resources": {"cpus": cpus, "memory": "256Mi"},
            "params": {"log": str(log), "steps": steps, "step_seconds": step_seconds,
                       "checkpoint_every": 1}}


def start_of(lines: list[dict[str, Any]], attempt: int) -> dict[str, Any]:
    return next(x for x in lines if x.get("event") == "start" and x["attempt"] == attempt)


def check_resumed(attempts: list[dict[str, Any]], far_lines: list[dict[str, Any]],
                  near_lines: list[dict[str, Any]], host2: Host2) -> None:
    """Attempt 2, here, started from a checkpoint attempt 1 made on the second host, after
    the step it checkpointed, not from zero."""
    origin = start_of(near_lines, 2)["resumed"]
    assert origin is not None, "attempt 2 started from zero"
    assert (origin["attempt"], origin["host"]) == (1, host2.host.ns), origin
    assert attempts[1]["resumed_from_step"] == origin["step"] >= 1, attempts[1]
    far_steps = [x["step"] for x in far_lines if "step" in x]
    near_steps = [x["step"] for x in near_lines if "step" in x]
    assert origin["step"] <= max(far_steps) and min(near_steps) == origin["step"] + 1


def test_a_job_resumes_on_the_first_host_from_what_its_killed_node_uploaded(
    fleet: Fleet, host2: Host2, s3: S3Server, tmp_path: Path
) -> None:
    log, far_log = witness(host2, tmp_path)
    for path in (fleet.settings.s3_credentials_file, host2.outside(s3.credentials_file)):
        assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "FLEET_STORAGE" not in host2.env and "FLEET_S3_ENDPOINT" not in host2.env
    fleet.master()
    far = host2.node("far-1", cores=[0])
    job_id = fleet.client.submit(job_spec(log, steps=60, step_seconds=0.2, cpus=1))
    storage = store(fleet, s3)
    eventually(lambda: max(uploaded_steps(storage, job_id, 1), default=0) >= 3, 60,
               what="step 3's checkpoint uploaded from the second host")
    fleet.node("near-1", cores=[1])
    uploaded = uploaded_steps(storage, job_id, 1)
    killed_at = time.time()
    fleet.kill(far)  # not a child of this process: nothing to reap
    final = fleet.wait_job(job_id, 90)
    time.sleep(2)  # a job left running on the second host would write again by now
    attempts = fleet.client.status(job_id)["attempts"]
    far_lines, near_lines = read_lines(far_log), read_lines(log)
    print(f"killed -> attempt 2's first step {min(steps_of(near_lines, 2)) - killed_at:.2f} s; "
          f"attempt 1 had uploaded steps {sorted(uploaded)} before, logged up to "
          f"{max(x['step'] for x in far_lines if 'step' in x)}; attempt 2 resumed from "
          f"{attempts[1].get('resumed_from_step')}")
    assert final["state"] == "SUCCEEDED", final
    assert [(a["node"], a["end_reason"]) for a in attempts] == [
        ("far-1", "NODE_LOST"), ("near-1", "SUCCEEDED")]
    assert {x["host"] for x in far_lines} == {host2.host.ns}
    assert host2.host.ns not in {x["host"] for x in near_lines}
    check_resumed(attempts, far_lines, near_lines, host2)
    assert attempts[1]["resumed_from_step"] >= min(uploaded)  # not an older one (2 are kept)
    assert sum(x.get("event") == "done" for x in far_lines + near_lines) == 1
    assert max(steps_of(far_lines, 1)) < attempts[0]["ended_at"] < min(steps_of(near_lines, 2))


def test_a_partitioned_second_host_hands_its_jobs_over_through_s3_and_rejoins(
    fleet: Fleet, host2: Host2, s3: S3Server, tmp_path: Path
) -> None:
    logs = [witness(host2, tmp_path, f"job-{i}") for i in range(2)]
    began = time.time()
    fleet.master()
    host2.node("far-1", cores=[0])
    jobs = [fleet.client.submit(job_spec(log, steps=90, step_seconds=0.25, cpus=0.5))
            for log, _ in logs]
    storage = store(fleet, s3)
    eventually(lambda: all(max(uploaded_steps(storage, j, 1), default=0) >= 3 for j in jobs), 60,
               what="step 3's checkpoint of each job uploaded from the second host")
    fleet.node("near-1", cores=[1])
    before = {n["node"]: n for n in fleet.client.nodes()}["far-1"]
    cut_at = time.time()
    host2.host.cut()
    try:
        eventually(lambda: all(steps_of(read_lines(log), 2) for log, _ in logs), PARTITION_S,
                   what="both jobs re-placed on the first host")
        replaced_at = time.time()
        time.sleep(max(0.0, cut_at + PARTITION_S - time.time()))
    finally:
        host2.host.mend()
    mended_at = time.time()
    back = eventually(
        lambda: (n := {n["node"]: n for n in fleet.client.nodes()}.get("far-1"))
        and n["incarnation"] != before["incarnation"] and n, 30,
        what="far-1 back as a new incarnation after the partition")
    rejoined_at = time.time()
    finals = [fleet.wait_job(job_id, 90) for job_id in jobs]
    time.sleep(3)  # a stale attempt that was not stopped would write again by now
    report = []
    for job_id, (log, far_log) in zip(jobs, logs, strict=True):
        attempts = fleet.client.status(job_id)["attempts"]
        far_lines, near_lines = read_lines(far_log), read_lines(log)
        far_steps, near_steps = steps_of(far_lines, 1), steps_of(near_lines, 2)
        report.append((job_id, attempts, far_lines, near_lines, far_steps, near_steps))
        print(f"{job_id}: link down -> last step there {max(far_steps) - cut_at:+.2f} s; -> "
              f"attempt 1 ended {attempts[0]['ended_at'] - cut_at:+.2f} s; -> first step here "
              f"{min(near_steps) - cut_at:+.2f} s; overlap {overlap(far_steps, near_steps):.3f}"
              f" s; resumed from step {attempts[-1].get('resumed_from_step')} of "
              f"{max(x['step'] for x in far_lines if 'step' in x)} done there")
    print(f"all re-placed {replaced_at - cut_at:.2f} s after the cut; link up -> far-1 "
          f"heartbeats {rejoined_at - mended_at:.2f} s, incarnation {before['incarnation']} -> "
          f"{back['incarnation']}; total {time.time() - began:.1f} s")
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * len(jobs), finals
    for job_id, attempts, far_lines, near_lines, far_steps, near_steps in report:
        assert [(a["node"], a["end_reason"]) for a in attempts] == [
            ("far-1", "NODE_LOST"), ("near-1", "SUCCEEDED")], (job_id, attempts)
        # self-fenced before the lease could end; the two attempts never ran at once
        assert max(far_steps) < cut_at + fleet.settings.heartbeat_ttl
        assert max(far_steps) < attempts[0]["ended_at"] < min(near_steps)
        assert overlap(far_steps, near_steps) == 0.0
        assert {x["host"] for x in far_lines} == {host2.host.ns}
        assert host2.host.ns not in {x["host"] for x in near_lines}
        assert sum(x.get("event") == "done" for x in far_lines + near_lines) == 1
        check_resumed(attempts, far_lines, near_lines, host2)
    # rejoined over the mended link, holding nothing of the jobs it lost
    assert far_clients(fleet, host2)
    assert back["jobs"] == [] and not back["reserved"].get("cpus"), back
