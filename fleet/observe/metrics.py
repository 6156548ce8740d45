"""Prometheus metrics of the fleet itself, computed from Redis on every scrape.

Nothing is counted in memory: each scrape reads the node reports (as `fleet nodes` does) and
the job records (as `fleet jobs` does), so the numbers agree with the CLI and survive exporter
restarts, and any number of exporters may run. The metric names and labels are documented in
docs/watching.md. Served by `fleet exporter` (prometheus_client's HTTP server).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleet.states import JobState
from fleet.store import keys, quarantine, records, registry

# Seconds: from a submit to the job's first reservation / first start.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
CHUNK = 1000  # job records read per pipelined round trip


@dataclass
class JobTimes:
    state: str
    submitted_at: float | None
    first_placed_at: float | None
    first_started_at: float | None


@dataclass
class Snapshot:
    """What one scrape read from Redis."""

    nodes: list[dict[str, Any]] = field(default_factory=list)  # live reports, `fleet nodes` shape
    jobs: list[JobTimes] = field(default_factory=list)
    pending: int = 0  # the pending set (waiting for a node, or backing off before a retry)
    placing: int = 0  # reserved, not yet claimed by the node's worker
    master_up: bool = False
    #: reader ("master", "exporter") -> record kind -> malformed records found
    bad_records: dict[str, dict[str, int]] = field(default_factory=dict)
    master_errors: int = 0  # master rounds that failed and went on


def read_snapshot(client: redis.Redis) -> Snapshot:
    """One consistent-enough read: node reports in one round trip, job records in chunks."""
    nodes = [s["report"] for s in registry.node_states(client) if s["report"]]
    try:
        members: Any = client.zrange(keys.JOBS, 0, -1)
    except redis.exceptions.ResponseError as exc:  # not a zset: the master moves it aside
        quarantine.note("index", keys.JOBS, exc)
        members = []
    ids = [keys.decode(v) for v in members]
    jobs: list[JobTimes] = []
    for i in range(0, len(ids), CHUNK):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[i : i + CHUNK]:
            pipe.hmget(keys.job(job_id), "state", "submitted_at")
            pipe.hget(keys.job_attempts(job_id), "1")
        raw = pipe.execute(raise_on_error=False)
        for job_id, fields, first in zip(ids[i : i + CHUNK], raw[0::2], raw[1::2], strict=True):
            times = _job_times(job_id, fields, first)
            if times is not None:
                jobs.append(times)
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.PENDING)
    pipe.zcard(keys.PLACING)
    pipe.exists(keys.MASTER_LEASE)
    pipe.get(keys.MASTER_ERRORS)
    pending, placing, master, errors = pipe.execute(raise_on_error=False)
    return Snapshot(nodes, jobs, _count(pending), _count(placing), _count(master) > 0,
                    bad_records={"master": quarantine.counts_in_redis(client),
                                 "exporter": dict(quarantine.found.counts)},
                    master_errors=_count(errors))


def _job_times(job_id: str, fields: Any, first: Any) -> JobTimes | None:
    """One job's state and first times, None when its record is missing or malformed."""
    if isinstance(fields, Exception) or fields[0] is None:
        if isinstance(fields, Exception):
            quarantine.note("job", keys.job(job_id), fields)
        return None
    state, submitted = fields
    try:
        if keys.decode(state) not in records.JOB_STATES:
            raise records.BadRecord("job", "state", f"{keys.decode(state)[:40]!r} is not a job state")
        attempt = ({} if not first or isinstance(first, Exception)
                   else records.attempt_record(first))
        return JobTimes(keys.decode(state), records.optional_number("job", "submitted_at", submitted,
                                                                  0.0, 1e11, text_ok=True),
                        attempt.get("placed_at"), attempt.get("started_at"))
    except records.BadRecord as exc:
        quarantine.note(exc.kind, keys.job(job_id), exc.args[0])
        return None


def _count(value: Any) -> int:
    """A count Redis answered, 0 for an error (a key of the wrong type) or a non-number."""
    try:
        return max(0, int(keys.decode(value))) if value is not None else 0
    except (ValueError, TypeError):
        return 0


def families(snap: Snapshot) -> list[Metric]:
    """The metric families of one snapshot (pure: tests call it with plain values)."""
    out: list[Metric] = []
    by_state = GaugeMetricFamily("fleet_jobs", "Jobs by state (every job the fleet accepted)",
                                 labels=["state"])
    counts = {s.value: 0 for s in JobState}
    for job in snap.jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    for state, count in counts.items():
        by_state.add_metric([state], count)
    out.append(by_state)
    out.append(GaugeMetricFamily("fleet_pending_jobs", "Jobs waiting in the pending set",
                                 value=snap.pending))
    out.append(GaugeMetricFamily("fleet_placing_jobs", "Jobs reserved on a node, not yet claimed",
                                 value=snap.placing))
    out.append(GaugeMetricFamily("fleet_master_up", "1 while a master holds the lease",
                                 value=int(snap.master_up)))
    out.append(GaugeMetricFamily("fleet_nodes", "Live nodes (heartbeat lease held)",
                                 value=len(snap.nodes)))
    out.extend(_node_families(snap.nodes))
    bad = CounterMetricFamily("fleet_bad_records", "Malformed records found in Redis and "
                              "skipped or repaired, by kind of record and by who read them",
                              labels=["kind", "reader"])
    for reader, counts in sorted(snap.bad_records.items()):
        for kind, n in sorted(counts.items()):
            bad.add_metric([kind, reader], n)
    out.append(bad)
    out.append(CounterMetricFamily("fleet_master_round_errors",
                                   "Master rounds that failed on an unexpected error and went on",
                                   value=snap.master_errors))
    out.append(_histogram("fleet_job_placement_latency_seconds",
                          "Seconds from submit to the job's first reservation on a node",
                          [j.first_placed_at - j.submitted_at for j in snap.jobs
                           if j.first_placed_at is not None and j.submitted_at is not None]))
    out.append(_histogram("fleet_job_wait_seconds",
                          "Seconds from submit to the start of the job's first attempt",
                          [j.first_started_at - j.submitted_at for j in snap.jobs
                           if j.first_started_at is not None and j.submitted_at is not None]))
    return out


def _node_families(nodes: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    cpus = GaugeMetricFamily("fleet_node_cpus", "CPUs of a node: capacity, reserved, used",
                             labels=["node", "kind"])
    memory = GaugeMetricFamily("fleet_node_memory_bytes",
                               "Memory of a node: capacity, reserved, used", labels=["node", "kind"])
    gpus = GaugeMetricFamily("fleet_node_gpus", "GPUs of a node: capacity, reserved, used",
                             labels=["node", "kind"])
    jobs = GaugeMetricFamily("fleet_node_running_jobs", "Jobs the node reports running",
                             labels=["node"])
    draining = GaugeMetricFamily("fleet_node_draining", "1 while the node drains",
                                 labels=["node"])
    seen = GaugeMetricFamily("fleet_node_report_timestamp_seconds",
                             "Time of the node's last report (its clock)", labels=["node"])
    for n in nodes:
        node = n["node"]
        parts = {"capacity": n.get("capacity") or {}, "reserved": n.get("reserved") or {},
                 "used": n.get("usage") or {}}
        for kind, values in parts.items():
            cpus.add_metric([node, kind], float(values.get("cpus", 0)))
            memory.add_metric([node, kind], float(values.get("memory", 0)))
            gpus.add_metric([node, kind], float(values.get("gpus", 0)))
        jobs.add_metric([node], len(n.get("jobs") or []))
        draining.add_metric([node], int(bool(n.get("draining"))))
        seen.add_metric([node], float(n.get("time") or 0))
    yield from (cpus, memory, gpus, jobs, draining, seen)


def _histogram(name: str, documentation: str, values: Iterable[float]) -> HistogramMetricFamily:
    values = [max(0.0, v) for v in values]
    buckets = [(repr(b), sum(1 for v in values if v <= b)) for b in BUCKETS]
    buckets.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(values))


class FleetCollector(Collector):
    """A prometheus_client collector that reads the fleet from Redis on each scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._lock = threading.Lock()  # the HTTP server may scrape from several threads

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = read_snapshot(self.r)
        yield from families(snap)

    def describe(self) -> list[Metric]:
        return []  # computed on scrape: nothing to check at registration


def serve(client: redis.Redis, port: int, address: str = "127.0.0.1") -> tuple[Any, Any]:
    """Start the HTTP endpoint (/metrics) in a thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(client))
    return start_http_server(port, addr=address, registry=reg)



