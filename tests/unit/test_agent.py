"""The node agent's report, from a probe's sample: GPU samples are plain dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.settings import Settings
from workers.node.agent import Agent
from workers.node.disk import DiskHealth
from workers.node.parsing import Capacity, Usage


class _Redis:
    """Just what `Agent.report` reads: no allocations, no drain flag."""

    def hgetall(self, key: str) -> dict:
        return {}

    def exists(self, *keys: str) -> int:
        return 0


class _Supervisor:
    node, incarnation = "node-1", "inc-1"
    disk = DiskHealth(Path("/nonexistent/jobs"))  # healthy: never probed

    def running_jobs(self) -> list:
        return []


class _Probe:
    def sample(self) -> Usage:
        return Usage(cpus=0.5, memory=2**20, gpus=[
            {"index": 0, "util": 50.0, "memory_used": 2**30},
            {"index": 1, "util": None, "memory_used": 0},
        ])


def test_report_sums_gpu_utilisation_from_the_probes_samples() -> None:
    capacity = Capacity(cpus=2.0, memory=2**31, gpus=2, gpu_memory=2**34, cpuset=(0, 1))
    agent = Agent(Settings(), _Redis(), _Supervisor(), capacity)  # type: ignore[arg-type]
    agent.probe = _Probe()  # type: ignore[assignment]
    report: dict[str, Any] = agent.report()
    assert report["usage"]["gpus"] == 0.5
    assert report["gpu_usage"][0] == {"index": 0, "util": 50.0, "memory_used": 2**30}
    assert report["usage"]["cpus"] == 0.5 and report["jobs"] == []
    assert report["healthy"] is True and report["unhealthy_reason"] is None


def test_a_node_that_cannot_write_reports_itself_unhealthy_with_the_reason() -> None:
    capacity = Capacity(cpus=1.0, memory=2**31, gpus=0, gpu_memory=0, cpuset=(0,))
    sup = _Supervisor()
    sup.disk = DiskHealth(Path("/nonexistent/jobs"))  # the probe cannot write there either
    sup.disk.fail("disk full: /x/output.log: No space left on device")
    agent = Agent(Settings(), _Redis(), sup, capacity)  # type: ignore[arg-type]
    agent.probe = _Probe()  # type: ignore[assignment]
    report = agent.report()
    assert report["healthy"] is False
    assert report["unhealthy_reason"] == "disk full: /x/output.log: No space left on device"


def test_a_beat_that_raises_a_bug_does_not_end_the_heartbeats() -> None:
    import threading

    capacity = Capacity(cpus=1.0, memory=2**31, gpus=0, gpu_memory=0, cpuset=(0,))
    agent = Agent(Settings(heartbeat_interval=0.01), _Redis(), _Supervisor(), capacity)  # type: ignore[arg-type]
    beats: list[int] = []
    stop = threading.Event()

    def beat() -> dict:
        beats.append(1)
        if len(beats) == 1:
            raise ValueError("a bug in one beat")
        if len(beats) >= 3:
            stop.set()
        return {}

    agent.beat = beat  # type: ignore[method-assign]
    worker = threading.Thread(target=agent.run, args=(stop,))
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and len(beats) >= 3  # it went on beating after the bug


def test_a_node_that_beats_again_past_its_fence_deadline_rejoins_as_a_new_incarnation() -> None:
    capacity = Capacity(cpus=1.0, memory=2**31, gpus=0, gpu_memory=0, cpuset=(0,))
    sup = _Supervisor()
    agent = Agent(Settings(), _Redis(), sup, capacity)  # type: ignore[arg-type]
    agent.rejoin_if_fenced(100.0)  # no beat applied yet: nothing to be cut off from
    assert sup.incarnation == "inc-1" and agent.replaces is None
    agent.lease_until = 101.8
    agent.rejoin_if_fenced(101.7)  # within the deadline: the same incarnation beats on
    assert sup.incarnation == "inc-1" and agent.replaces is None
    agent.rejoin_if_fenced(130.0)  # back after a partition: its jobs were killed at 101.8
    assert sup.incarnation != "inc-1" and agent.replaces == "inc-1"
    new = sup.incarnation
    agent.rejoin_if_fenced(133.0)  # its beats still fail: one new incarnation, not one each
    assert sup.incarnation == new and agent.replaces == "inc-1"
