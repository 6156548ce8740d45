"""Every record read back from Redis is validated before use: pure checks, plain values."""

from __future__ import annotations

import json

import pytest

from fleet.cli.context import no_master_line
from fleet.observe.metrics import Snapshot
from fleet.store import records
from fleet.store.quarantine import Found
from fleet.store.records import BadRecord
from tests.unit.test_watch_metrics import scrape

ALLOC = {"attempt": 1, "incarnation": "abc", "cpus_m": 1000, "memory": 2**30, "gpus": 0}
REPORT = {"node": "node-1", "incarnation": "abc", "time": 1764201600.0,
          "capacity": {"cpus": 2.0, "memory": 4 * 2**30, "gpus": 0, "cpuset": [0, 1]},
          "usage": {"cpus": 0.5, "memory": 2**20, "gpus": 0.0},
          "labels": {"zone": "a"}, "jobs": [{"job": "j-1", "attempt": 1}], "container": None}
SPEC = {"name": "j", "entrypoint": "workers.jobs.synthetic:noop", "params": {},
        "resources": {"cpus": 1.0, "memory": 2**28, "gpus": 0, "gpu_memory": None}}
JOB = {b"id": b"j-1", b"state": b"PENDING", b"spec": json.dumps(SPEC).encode(),
       b"request": b'{"cpus_m": 1000, "memory": 268435456, "gpus": 0}', b"attempt": b"0",
       b"seq": b"7", b"priority": b"0", b"submitted_at": b"1764201600.5", b"not_before": b"0"}


def with_(base: dict, **fields) -> dict:
    return {**base, **fields}


# -- allocations: a forged record with negative amounts must not crash the master ------------
def test_a_well_formed_allocation_reads_back_as_integers() -> None:
    assert records.alloc_entry(json.dumps(ALLOC).encode()) == ALLOC
    # Lua's cjson writes big integers in exponent form
    assert records.alloc_entry(b'{"attempt":2,"incarnation":"x","cpus_m":1e3,"memory":1e15}') == {
        "attempt": 2, "incarnation": "x", "cpus_m": 1000, "memory": 10**15, "gpus": 0}


@pytest.mark.parametrize("raw, field", [
    (json.dumps(with_(ALLOC, cpus_m=-4000, memory=-8589934592)), "cpus_m"),  # the forged ghost entry
    (json.dumps(with_(ALLOC, memory=-1)), "memory"),
    (json.dumps(with_(ALLOC, cpus_m=10**30)), "cpus_m"),
    (json.dumps(with_(ALLOC, cpus_m=1.5)), "cpus_m"),
    (json.dumps(with_(ALLOC, gpus=True)), "gpus"),
    (json.dumps(with_(ALLOC, memory="2Gi")), "memory"),
    (json.dumps(with_(ALLOC, cpus_m="1000")), "cpus_m"),  # reserve.lua could not sum it
    (json.dumps({k: v for k, v in ALLOC.items() if k != "cpus_m"}), "cpus_m"),
    (json.dumps(with_(ALLOC, attempt=0)), "attempt"),
    (json.dumps(with_(ALLOC, incarnation=7)), "incarnation"),
    ('{"attempt": 1, "incarnation": "x", "cpus_m": NaN, "memory": 1}', "cpus_m"),
    ('{"attempt": 1, "incarnation": "x", "cpus_m": Infinity, "memory": 1}', "cpus_m"),
    ("[1, 2]", "value"), ("not json", "value"), (b"\xff\xfe\x00", "value"), ("", "value"),
    ("[" * 100_000 + "]" * 100_000, "value"),
])
def test_a_malformed_allocation_is_refused_naming_the_field(raw, field) -> None:
    with pytest.raises(BadRecord) as caught:
        records.alloc_entry(raw)
    assert caught.value.kind == "alloc" and caught.value.field == field


# -- node reports -------------------------------------------------------------------------
def test_a_well_formed_report_reads_back() -> None:
    report = records.node_report(json.dumps(REPORT), "node-1")
    assert report["capacity"]["cpus"] == 2.0 and report["labels"] == {"zone": "a"}
    assert report["draining"] is False


@pytest.mark.parametrize("change, field", [
    ({"node": "node-2"}, "node"),
    ({"incarnation": None}, "incarnation"),
    ({"time": "yesterday"}, "time"),
    ({"capacity": {"cpus": -1, "memory": 1}}, "capacity.cpus"),
    ({"capacity": {"cpus": 1}}, "capacity.memory"),
    ({"capacity": [1, 2]}, "capacity"),
    ({"usage": {"cpus": float("nan")}}, "usage.cpus"),
    ({"labels": {"a": 1}}, "labels"),
    ({"jobs": [{"job": 3}]}, "jobs"),
    ({"jobs": "j-1"}, "jobs"),
    ({"container": 12}, "container"),
])
def test_a_malformed_report_is_refused_naming_the_field(change, field) -> None:
    with pytest.raises(BadRecord) as caught:
        records.node_report(json.dumps(with_(REPORT, **change)), "node-1")
    assert caught.value.field == field


# -- job records ---------------------------------------------------------------------------
def test_a_job_record_decodes_to_numbers_and_objects() -> None:
    job = records.job_record(JOB)
    assert job["seq"] == 7 and job["submitted_at"] == 1764201600.5 and job["spec"] == SPEC
    assert job["request"] == {"cpus_m": 1000, "memory": 2**28, "gpus": 0}
    assert job["terminal"] is False and job["placement"] is None


@pytest.mark.parametrize("change, field", [
    ({b"state": b"DONE"}, "state"),
    ({b"id": b""}, "id"),
    ({b"spec": b"{"}, "spec"),
    ({b"spec": b"[]"}, "spec"),
    ({b"spec": json.dumps(with_(SPEC, resources={"cpus": -1})).encode()}, "spec.resources.cpus"),
    ({b"spec": json.dumps(with_(SPEC, resources={"cpus": 0})).encode()}, "spec.resources.cpus"),
    ({b"spec": json.dumps(with_(SPEC, node_selector=["a"])).encode()}, "spec.node_selector"),
    ({b"spec": json.dumps(with_(SPEC, params=[1])).encode()}, "spec.params"),
    ({b"spec": json.dumps({k: v for k, v in SPEC.items() if k != "entrypoint"}).encode()},
     "spec.entrypoint"),
    ({b"request": b'{"cpus_m": -5}'}, "request.cpus_m"),
    ({b"seq": b"seven"}, "seq"),
    ({b"spec": json.dumps(with_(SPEC, resources={"cpus": "1"})).encode()}, "spec.resources.cpus"),
    ({b"priority": b"1e400"}, "priority"),
    ({b"submitted_at": b"nan"}, "submitted_at"),
    ({b"placement": b'{"candidates": [{"node": "n", "score": "high"}]}'},
     "placement.candidates[0].score"),
    ({b"progress": b'{"step": "x"}'}, "progress.step"),
    ({b"result": b"42"}, "result"),
])
def test_a_malformed_job_record_is_refused_naming_the_field(change, field) -> None:
    with pytest.raises(BadRecord) as caught:
        records.job_record({k: v for k, v in {**JOB, **change}.items() if v is not None})
    assert caught.value.kind == "job" and caught.value.field == field


def test_a_job_record_without_a_spec_is_refused() -> None:
    with pytest.raises(BadRecord, match="spec: missing"):
        records.job_record({k: v for k, v in JOB.items() if k != b"spec"})


# -- attempts, metrics, history, the lease -------------------------------------------------
def test_attempt_records_metrics_and_samples_are_checked() -> None:
    assert records.attempt_record(b'{"attempt": 2, "node": "n", "placed_at": 5}')["placed_at"] == 5.0
    assert records.metric_entry(b'{"step": 3, "metrics": {"loss": 0.5}}')["step"] == 3
    assert records.history_sample(b'{"time": 1, "usage": {"cpus": 0.5}}')["usage"]["cpus"] == 0.5
    for bad in (b'{"attempt": "one"}', b'{"attempt": 1, "ended_at": -3}', b'{"attempt": 1, "error": 5}',
                b"1", b"\x00"):
        with pytest.raises(BadRecord):
            records.attempt_record(bad)
    for bad in (b'{"step": 1.5}', b'{"metrics": [1]}', b'"loss"'):
        with pytest.raises(BadRecord):
            records.metric_entry(bad)
    with pytest.raises(BadRecord):
        records.history_sample(b'{"time": 1, "usage": {"memory": -1}}')


def test_a_lease_value_is_a_bounded_string() -> None:
    assert records.lease_holder(b"host:12:abcdef") == "host:12:abcdef"
    for bad in (b"", b"x" * 1000, 12):
        with pytest.raises(BadRecord):
            records.lease_holder(bad)


# -- what readers do with them ---------------------------------------------------------------
def test_a_fault_is_counted_once_however_often_it_is_read() -> None:
    found = Found()
    assert found.note("alloc", "fleet:node:n:alloc/ghost", "cpus_m: -4000")
    assert not found.note("alloc", "fleet:node:n:alloc/ghost", "cpus_m: -4000")
    assert found.note("alloc", "fleet:node:n:alloc/ghost", "memory: -1")
    assert found.note("job", "fleet:job:x", "state")
    assert found.counts == {"alloc": 2, "job": 1}


def test_the_exporter_serves_bad_records_by_kind_and_reader() -> None:
    snap = Snapshot(bad_records={"master": {"alloc": 3}, "exporter": {"job": 1}}, master_errors=2)
    m = scrape(snap)
    assert m[("fleet_bad_records_total", (("kind", "alloc"), ("reader", "master")))] == 3
    assert m[("fleet_bad_records_total", (("kind", "job"), ("reader", "exporter")))] == 1
    assert m[("fleet_master_round_errors_total", ())] == 2


def test_the_no_master_warning_says_for_how_long() -> None:
    assert no_master_line({"up": True, "down_for": None}) is None
    assert no_master_line({"up": None}) is None  # this credential cannot tell
    line = no_master_line({"up": False, "down_for": 12.4})
    assert line == ("no master has held the lease for 12 s "
                    "(start one: `fleet master`, or `fleet up`)")
    assert no_master_line({"up": False, "down_for": None}).startswith("no master holds the lease")
