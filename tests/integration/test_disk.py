"""A full disk under the node's artifacts, for real: a small tmpfs mounted there, filled.

The attempt fails as DISK (counted against max_retries) with the path and the errno's text,
the node reports itself unhealthy and takes no work while it cannot write, and serves again
once space returns. Mounting needs root (CI runs the tests as root); elsewhere it is skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.private import private_dir
from fleet.settings import Settings
from fleet.store import registry
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration

TMPFS_SIZE = "2m"


@pytest.fixture
def jobs_tmpfs(settings: Settings) -> Iterator[Path]:
    """A 2 MiB tmpfs as the node's artifacts/jobs, unmounted at the end."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    jobs = private_dir(settings.artifacts_dir / "jobs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                              "tmpfs", str(jobs)], capture_output=True, text=True)
    if mounted.returncode != 0 and not os.environ.get("CI"):
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    assert mounted.returncode == 0, mounted.stderr
    yield jobs
    if subprocess.run(["umount", str(jobs)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(jobs)], check=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill `directory`'s filesystem up to `leave` bytes free; returns the filler file."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while (st := os.statvfs(directory)).f_bavail * st.f_frsize > leave:
                f.write(b"\0" * min(1 << 16, st.f_bavail * st.f_frsize - leave or 4096))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def printer(lines: int, width: int = 0, max_retries: int = 0, interval: float = 0) -> dict:
    return {"name": "printer", "entrypoint": "workers.jobs.synthetic:print_lines",
            "resources": {"cpus": 1, "memory": "256Mi"}, "max_retries": max_retries,
            "params": {"lines": lines, "interval": interval, "width": width}}


def ended(fleet: Fleet, job_id: str, timeout: float = 60) -> dict:
    """The job's terminal status (Client.wait only times out when the state changes)."""
    return eventually(lambda: (s := fleet.client.status(job_id))["terminal"] and s, timeout,
                      what=f"{job_id} to end")


def report(fleet: Fleet, node: str) -> dict:
    return next(r for r in registry.live_reports(fleet.r) if r["node"] == node)


def test_a_full_disk_fails_the_job_as_disk_and_the_node_serves_once_space_returns(
    jobs_tmpfs: Path, fleet: Fleet
) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, cores=[0])
    assert report(fleet, "node-1")["healthy"] is True
    filler = fill(jobs_tmpfs)
    fleet.node("node-2", cpus=1, cores=[1])  # started on the full disk: unhealthy at once
    assert report(fleet, "node-2")["healthy"] is False
    failed = fleet.client.submit(printer(5))  # on node-1, which has not noticed yet
    final = ended(fleet, failed)
    assert final["state"] == "FAILED" and final["reason"] == "DISK", final
    assert final["error"].startswith(f"disk full: {jobs_tmpfs}/{failed}/attempt-1"), final["error"]
    assert final["error"].endswith(": No space left on device")
    attempts = fleet.client.status(failed)["attempts"]
    assert len(attempts) == 1 and attempts[0]["counted"] in (True, 1, "1")  # max_retries + 1
    eventually(lambda: report(fleet, "node-1")["healthy"] is False, 10, what="node-1 unhealthy")
    reason = report(fleet, "node-1")["unhealthy_reason"]
    assert reason.startswith("disk full: ") and "No space left on device" in reason
    shown = fleet.cli("nodes", check=True).stdout
    assert "unhealthy" in shown and "disk full" in shown
    # while full, a job waits rather than burn its attempts on this node
    waiting = fleet.client.submit(printer(3, max_retries=2))
    says = eventually(lambda: (fleet.client.status(waiting)["waiting"] or "").find("unhealthy")
                      >= 0 and fleet.client.status(waiting)["waiting"], 10, what="a reason")
    assert "node-1 unhealthy (disk full" in says, says  # the reason, not "no live nodes"
    assert fleet.client.status(waiting)["state"] == "PENDING"
    assert report(fleet, "node-1")["healthy"] is False
    filler.unlink()
    eventually(lambda: report(fleet, "node-1")["healthy"] is True, 10, what="node-1 healthy")
    assert fleet.client.status(failed)["node"] == "node-1"
    assert ended(fleet, waiting)["state"] == "SUCCEEDED"
    assert report(fleet, "node-2")["healthy"] is True


def test_a_disk_that_fills_while_a_job_prints_stops_it_as_disk_naming_its_log(
    jobs_tmpfs: Path, fleet: Fleet
) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, cores=[0])
    filler = fill(jobs_tmpfs, leave=1536 << 10)  # room to start (1 MiB), not to go on
    # 256 MiB of output, seconds of printing: the disk fills while it runs (a job over by
    # then keeps its own outcome, the lost log lines noted on its attempt)
    job_id = fleet.client.submit(printer(2**21, width=127, interval=0))
    final = ended(fleet, job_id)
    assert final["state"] == "FAILED" and final["reason"] == "DISK", final
    log = jobs_tmpfs / job_id / "attempt-1" / "output.log"
    assert final["error"] == f"disk full: {log}: No space left on device"
    assert len(fleet.client.status(job_id)["attempts"]) == 1  # max_retries + 1
    eventually(lambda: report(fleet, "node-1")["healthy"] is False, 10, what="node-1 unhealthy")
    filler.unlink()  # the operator frees space: the filler, and the failed job's full log
    shutil.rmtree(jobs_tmpfs / job_id)
    eventually(lambda: report(fleet, "node-1")["healthy"] is True, 10, what="node-1 healthy")
    again = fleet.client.submit(printer(3))
    assert ended(fleet, again)["state"] == "SUCCEEDED"


def test_a_job_that_fills_the_nodes_disk_itself_fails_as_disk_counted(
    jobs_tmpfs: Path, fleet: Fleet
) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, cores=[0])
    job_id = fleet.client.submit({
        "name": "filler", "entrypoint": "workers.jobs.synthetic:write_file",
        "resources": {"cpus": 1, "memory": "256Mi"}, "max_retries": 0, "params": {"mib": 8}})
    final = ended(fleet, job_id)
    assert final["state"] == "FAILED" and final["reason"] == "DISK", final
    assert final["error"].startswith(f"disk full: {jobs_tmpfs}: No space left on device (the job: ")
    assert "[Errno 28]" in final["error"]
    eventually(lambda: report(fleet, "node-1")["healthy"] is False, 10, what="node-1 unhealthy")
    shutil.rmtree(jobs_tmpfs / job_id)  # the operator removes what the job left
    eventually(lambda: report(fleet, "node-1")["healthy"] is True, 10, what="node-1 healthy")
