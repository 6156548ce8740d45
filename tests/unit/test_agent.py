"""The node agent's report, from a probe's sample: GPU samples are plain dicts."""

from __future__ import annotations

from typing import Any

from fleet.settings import Settings
from workers.agent import Agent
from workers.load import Capacity, Usage


class _Redis:
    """Just what `Agent.report` reads: no allocations, no drain flag."""

    def hgetall(self, key: str) -> dict:
        return {}

    def exists(self, *keys: str) -> int:
        return 0


class _Supervisor:
    node, incarnation = "node-1", "inc-1"

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
