"""A job's output, for real: relayed fast on a 1-CPU node, its stored log capped with the tail
kept and the cut said, `fleet logs` reading it, and every file of it the owner's only."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleet.drivers.redis_server import RedisServer
from fleet.settings import Settings
from fleet.store.jobstore import JobStore
from tests.integration.support import Fleet

pytestmark = pytest.mark.integration

GIB_LINES, GIB_WIDTH = 2**23, 127  # 8,388,608 lines of 128 bytes: 1 GiB


def printer(lines: int, width: int = 0, name: str = "printer") -> dict:
    return {"name": name, "entrypoint": "workers.jobs.synthetic:print_lines",
            "resources": {"cpus": 1, "memory": "512Mi"},
            "params": {"lines": lines, "interval": 0, "width": width}}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def small_log_fleet(settings: Settings, redis_server: RedisServer) -> Iterator[Fleet]:
    """A fleet whose nodes keep 256 KiB of each attempt's output on disk."""
    f = Fleet(settings.model_copy(update={"log_max_bytes": 256 << 10}), redis_server)
    yield f
    f.stop()
    print(f.log_tails())


def test_a_gib_of_output_on_a_1_cpu_node_is_relayed_fast_and_stored_capped(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], record_property,
) -> None:
    """Acceptance: print_lines writing 1 GiB finishes in <= 60 s on a 1-CPU node (the node,
    its supervisor and the job on one core). The figure is printed; the assert is generous,
    for a shared machine."""
    fleet.master()
    node = fleet.node("node-1", cpus=1, cores=[0])
    worker = psutil.Process(node)
    cpu_before = sum(worker.cpu_times()[:2])
    job_id = fleet.client.submit(printer(GIB_LINES, GIB_WIDTH, name="gib"))
    final = fleet.wait_job(job_id, 600)
    cpu = sum(worker.cpu_times()[:2]) - cpu_before
    assert final["state"] == "SUCCEEDED", final
    attempt = JobStore(fleet.r).attempts(job_id)[0]
    seconds = attempt["ended_at"] - attempt["started_at"]
    rate = 1024 / seconds
    figure = (f"1 GiB of output on a 1-CPU node: {seconds:.1f} s, {rate:.1f} MiB/s; "
              f"supervisor CPU {attempt['supervisor_cpu']:.2f} s, "
              f"whole worker process (supervisor, agent, Celery) {cpu:.2f} s")
    record_property("output_mib_per_s", round(rate, 1))
    record_property("supervisor_cpu_s", attempt["supervisor_cpu"])
    record_property("worker_cpu_s", round(cpu, 2))
    assert attempt["supervisor_cpu"] < 30, figure  # bounded: ~2 s measured
    with capsys.disabled():
        print(f"\n[measured] {figure}")
    assert seconds < 240, figure  # acceptance is 60 s on a machine of its own
    log = fleet.settings.artifacts_dir / "jobs" / job_id / "attempt-1" / "output.log"
    stored = log.stat().st_size + log.with_name("output.log.1").stat().st_size
    assert stored <= fleet.settings.log_max_bytes + 100
    with log.open("rb") as f:
        assert f.readline().startswith(b"[fleet: ")  # the cut, said
    last = log.read_bytes()[-(GIB_WIDTH + 1):]
    assert last == f"line {GIB_LINES} of {GIB_LINES}".ljust(GIB_WIDTH).encode() + b"\n"


def test_fleet_logs_shows_a_capped_logs_tail_after_the_cut(small_log_fleet: Fleet) -> None:
    fleet = small_log_fleet
    fleet.master()
    fleet.node("node-1", cpus=1, cores=[0])
    total = 60000  # ~1.3 MB of lines: five caps
    job_id = fleet.client.submit(printer(total))
    assert fleet.wait_job(job_id, 120)["state"] == "SUCCEEDED"
    shown = fleet.cli("logs", job_id, check=True).stdout.splitlines()
    note, tail = shown[0], shown[1:]
    assert note.startswith("[fleet: ") and note.endswith(" MiB of earlier output cut]"), note
    assert tail == [f"line {i} of {total}" for i in range(total - len(tail) + 1, total + 1)]
    assert len(tail) > 5000  # more than Redis keeps: it was read from the file
    job_dir = fleet.settings.artifacts_dir / "jobs" / job_id
    assert sum(p.stat().st_size for p in (job_dir / "attempt-1").glob("output.log*")) <= 256 << 10


def test_fleet_home_artifacts_and_a_jobs_folders_are_the_owners_only(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, cores=[0])
    job_id = fleet.client.submit(printer(3))
    assert fleet.wait_job(job_id, 60)["state"] == "SUCCEEDED"
    artifacts = fleet.settings.artifacts_dir
    attempt = artifacts / "jobs" / job_id / "attempt-1"
    for folder in (fleet.settings.home_dir, artifacts, artifacts / "jobs", attempt.parent, attempt):
        assert mode(folder) == 0o700, folder
    assert mode(attempt / "output.log") == 0o600
    assert (attempt / "output.log").read_text().splitlines() == [f"line {i} of 3" for i in (1, 2, 3)]
    time.sleep(0)  # nothing else: the modes are set when made, not fixed up later
