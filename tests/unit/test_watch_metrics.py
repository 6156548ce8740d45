"""Prometheus families from a snapshot: exposition parses back to the same numbers."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fleet.observe.metrics import JobTimes, Snapshot, families

NODE = {"node": "node-1", "time": 100.0, "jobs": [{"job": "a"}], "draining": False,
        "capacity": {"cpus": 2.0, "memory": 4096, "gpus": 0},
        "reserved": {"cpus": 1.0, "memory": 1024, "gpus": 0},
        "usage": {"cpus": 0.75, "memory": 512, "gpus": 0.0}}


class Fixed:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        return families(self.snap)


def scrape(snap: Snapshot) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed(snap))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_exposition_parses_to_the_snapshot_numbers() -> None:
    jobs = [JobTimes("SUCCEEDED", 10.0, 10.2, 10.3), JobTimes("RUNNING", 20.0, 23.0, 24.0),
            JobTimes("PENDING", 30.0, None, None)]
    m = scrape(Snapshot(nodes=[NODE], jobs=jobs, pending=1, placing=0, master_up=True))
    assert m[("fleet_jobs", (("state", "RUNNING"),))] == 1
    assert m[("fleet_jobs", (("state", "FAILED"),))] == 0
    assert m[("fleet_pending_jobs", ())] == 1 and m[("fleet_master_up", ())] == 1
    assert m[("fleet_node_cpus", (("kind", "used"), ("node", "node-1")))] == 0.75
    assert m[("fleet_node_memory_bytes", (("kind", "capacity"), ("node", "node-1")))] == 4096
    assert m[("fleet_node_running_jobs", (("node", "node-1"),))] == 1
    assert m[("fleet_job_placement_latency_seconds_count", ())] == 2
    assert m[("fleet_job_placement_latency_seconds_sum", ())] == pytest.approx(3.2)
    assert m[("fleet_job_placement_latency_seconds_bucket", (("le", "0.25"),))] == 1
    assert m[("fleet_job_wait_seconds_bucket", (("le", "5.0"),))] == 2


def test_an_empty_fleet_still_exposes_every_family() -> None:
    m = scrape(Snapshot())
    assert m[("fleet_nodes", ())] == 0
    assert m[("fleet_job_wait_seconds_count", ())] == 0
