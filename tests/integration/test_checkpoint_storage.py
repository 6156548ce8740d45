"""Checkpoints in the fleet's S3 store, for real: a real SeaweedFS server, real nodes, a job that
checkpoints every step and says itself where it resumed from (`workers.jobs.synthetic:steps`:
its result's `resumed_from`, and the attempt record's `resumed_from_step`).

- a job's checkpoints are in S3, each set with its MANIFEST.json; with the node's local folder
  gone (another host), the next attempt resumes from S3;
- S3 stopped for 20 s while a job trains: the job goes on, its record says the upload is
  retrying, uploads resume once S3 is back, and the job succeeds;
- S3 stopped when an attempt must restore: it waits (or ends with a storage reason and is
  placed again), and resumes from the checkpoint once S3 is back, never from zero.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.drivers.s3_server import S3Server
from fleet.settings import Settings
from fleet.storage import layout
from fleet.storage.manifest import MANIFEST, read_set
from fleet.storage.s3 import S3Storage
from fleet.store.jobstore import JobStore
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A server of this test's own: the tests stop and restart it."""
    server = S3Server(tmp_path / "s3").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t-{secrets.token_hex(4)}/"


@pytest.fixture
def restore_wait() -> float:
    return 60.0


@pytest.fixture
def settings(settings: Settings, s3: S3Server, prefix: str, restore_wait: float) -> Settings:
    return settings.model_copy(update={
        "allowlist": ["workers.jobs", "tests.integration.checkpoint_job"],
        "storage": f"s3://{s3.bucket}/{prefix}", "s3_endpoint": s3.endpoint,
        "s3_credentials_file": s3.credentials_file, "restore_wait": restore_wait,
        # every checkpoint uploaded, none skipped for the interval: these tests count sets
        "checkpoint_upload_interval": 0.0})


@pytest.fixture
def bucket(s3: S3Server, prefix: str) -> S3Storage:
    return s3.storage(prefix)


def steps(n: int, step_seconds: float = 0.3, **fields: Any) -> dict[str, Any]:
    return {"name": "steps", "entrypoint": "workers.jobs.synthetic:steps",
            "resources": {"cpus": 1, "memory": "256Mi"},
            "params": {"steps": n, "step_seconds": step_seconds}, **fields}


def committed_step(fleet: Fleet, job_id: str) -> int:
    found = JobStore(fleet.r).committed_checkpoints(job_id)
    return int(found[0]["step"]) if found else 0


def stored_steps(bucket: S3Storage, job_id: str) -> list[tuple[int, int]]:
    """(attempt, step) of the complete sets in the store."""
    found = []
    for o in bucket.list(layout.checkpoints_prefix(job_id)):
        if o.key.endswith("/" + MANIFEST):
            rest = o.key[len(layout.checkpoints_prefix(job_id)):].split("/")
            found.append((int(rest[0].split("-")[1]), int(rest[1].split("-")[1])))
    return sorted(found)


def local_checkpoints(fleet: Fleet, job_id: str) -> Path:
    return fleet.settings.artifacts_dir / "jobs" / job_id / "checkpoints"


def attempts(fleet: Fleet, job_id: str) -> list[dict[str, Any]]:
    return list(fleet.client.status(job_id)["attempts"])


def test_checkpoints_go_to_s3_and_a_new_host_resumes_from_there(
        fleet: Fleet, bucket: S3Storage) -> None:
    """17 MiB checkpoints: over the multipart threshold, both ways."""
    fleet.master()
    fleet.node("node-1", cores=[0])
    job_id = fleet.client.submit({
        "name": "heavy", "entrypoint": "tests.integration.checkpoint_job:heavy_steps",
        "resources": {"cpus": 1, "memory": "512Mi"}, "keep_checkpoints": 3,
        "params": {"steps": 30, "mib": 17, "step_seconds": 0.2}})
    eventually(lambda: committed_step(fleet, job_id) >= 8, 60, what="step 8 committed")
    sets = stored_steps(bucket, job_id)
    assert len(sets) <= 4 and all(a == 1 for a, _ in sets), sets  # keep 3 (+ one uploading)
    newest = sets[-1]
    manifest = read_set(bucket, layout.checkpoint_prefix(job_id, *newest))
    assert manifest is not None and manifest["meta"]["node"] == "node-1"
    assert "manifest.json" in manifest["files"]  # the local checkpoint's own, sha256s inside
    assert manifest["files"]["weights.bin"] == 17 << 20

    # the node dies, and what it had on disk with it: the next host has only the store
    fleet.kill(fleet.nodes["node-1"])
    shutil.rmtree(local_checkpoints(fleet, job_id))
    fleet.node("node-2", cores=[1])
    final = fleet.wait_job(job_id, 120)
    assert final["state"] == "SUCCEEDED", final
    tried = attempts(fleet, job_id)
    assert [a["end_reason"] for a in tried] == ["NODE_LOST", "SUCCEEDED"]
    assert tried[1]["node"] == "node-2" and tried[1]["resumed_from_step"] >= 8
    assert final["result"]["resumed_from"] == tried[1]["resumed_from_step"]
    assert {a for a, _ in stored_steps(bucket, job_id)} == {2}  # attempt 2 pruned attempt 1's
    assert len(stored_steps(bucket, job_id)) == 3


def test_a_cancelled_job_s_last_checkpoint_is_in_s3_before_it_ends(
        fleet: Fleet, bucket: S3Storage) -> None:
    fleet.master()
    fleet.node("node-1", cores=[0])
    job_id = fleet.client.submit({
        "name": "heavy", "entrypoint": "tests.integration.checkpoint_job:heavy_steps",
        "resources": {"cpus": 1, "memory": "512Mi"},
        "params": {"steps": 400, "mib": 17, "step_seconds": 0.05}})
    eventually(lambda: committed_step(fleet, job_id) >= 3, 60, what="step 3 committed")
    fleet.client.cancel(job_id)
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "CANCELLED", final
    last = fleet.client.status(job_id)["progress"]["step"]  # reported after its checkpoint
    assert committed_step(fleet, job_id) == last
    assert stored_steps(bucket, job_id)[-1] == (1, last)
    assert not attempts(fleet, job_id)[0].get("checkpoint_upload")


def test_s3_down_for_20s_while_training_the_job_goes_on(
        fleet: Fleet, s3: S3Server, bucket: S3Storage) -> None:
    fleet.master()
    fleet.node("node-1", cores=[0])
    job_id = fleet.client.submit(steps(120, 0.25))
    eventually(lambda: committed_step(fleet, job_id) >= 3, 60, what="step 3 committed")
    s3.stop()
    down_at = time.monotonic()
    retrying = eventually(lambda: (attempts(fleet, job_id)[-1].get("checkpoint_upload") or ""), 20,
                          what="the record to say the upload is retrying")
    assert retrying.startswith("retrying since "), retrying
    stuck = committed_step(fleet, job_id)
    progress_then = fleet.client.status(job_id)["progress"]["step"]
    time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
    assert fleet.client.status(job_id)["state"] == "RUNNING"
    assert fleet.client.status(job_id)["progress"]["step"] >= progress_then + 20  # trained on
    assert committed_step(fleet, job_id) == stuck  # nothing counts that is not in the store
    s3.start()
    eventually(lambda: committed_step(fleet, job_id) > stuck, 30, what="uploads to resume")
    eventually(lambda: attempts(fleet, job_id)[-1].get("checkpoint_upload") is None, 10,
               what="the record's retrying note to clear")
    final = fleet.wait_job(job_id, 120)
    assert final["state"] == "SUCCEEDED", final
    assert stored_steps(bucket, job_id)[-1] == (1, 120)  # the last one, uploaded at the end


@pytest.mark.parametrize("restore_wait", [60.0, 2.0])
def test_s3_down_at_restore_waits_and_never_starts_from_zero(
        fleet: Fleet, s3: S3Server, restore_wait: float) -> None:
    """restore_wait 60: attempt 2 waits for S3; 2: attempts end WORKER_LOST (a storage
    reason, not counted) and the job is placed again until S3 is back."""
    fleet.master()
    fleet.node("node-1", cores=[0])
    job_id = fleet.client.submit(steps(40, 0.2))
    eventually(lambda: committed_step(fleet, job_id) >= 5, 60, what="step 5 committed")
    fleet.kill(fleet.nodes["node-1"])
    resume_at = committed_step(fleet, job_id)
    shutil.rmtree(local_checkpoints(fleet, job_id))
    s3.stop()
    fleet.node("node-2", cores=[1])
    waiting = eventually(lambda: len(attempts(fleet, job_id)) >= 2 and (
        attempts(fleet, job_id)[1].get("checkpoint_restore") or ""), 30,
        what="attempt 2 to wait for the store")
    assert waiting.startswith("waiting for the store since "), waiting
    threading.Event().wait(6)  # S3 stays down: the job is not started from zero meanwhile
    assert all(a.get("resumed_from_step") is None for a in attempts(fleet, job_id))
    assert not any((fleet.settings.artifacts_dir / "jobs" / job_id / f"attempt-{a['attempt']}"
                    / "output.log").read_text().strip() for a in attempts(fleet, job_id)[1:])
    s3.start()
    final = fleet.wait_job(job_id, 120)
    assert final["state"] == "SUCCEEDED", final
    tried = attempts(fleet, job_id)
    resumed = [a for a in tried if a.get("resumed_from_step") is not None]
    assert resumed and all(a["resumed_from_step"] >= resume_at for a in resumed), resumed
    assert final["result"]["resumed_from"] >= resume_at
    assert final["retries"] == 0  # nothing counted against the job
    if restore_wait < 5:
        lost = [a for a in tried[1:-1] if a["end_reason"] == "WORKER_LOST"]
        assert lost and all("could not read the store to restore" in a["error"] for a in lost), tried
