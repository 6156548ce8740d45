"""The in-memory store keeps the Redis store's invariants (fleet.store.protocol)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fleet.errors import NotFound
from fleet.spec import JobSpec
from fleet.states import EndReason
from fleet.store.jobstore import Outcome
from fleet.store.memory import MemoryStore
from fleet.store.protocol import Refused, Store
from fleet.store.registry import NodeIdTaken

ONE_CPU = JobSpec(name="job", entrypoint="workers.jobs.synthetic:noop",
                  resources={"cpus": 1, "memory": "100Mi"})


def up(store: MemoryStore, node: str = "n1", cpus: float = 2.0, incarnation: str = "i1") -> None:
    store.heartbeat({"node": node, "incarnation": incarnation,
                     "capacity": {"cpus": cpus, "memory": 2**30}}, ttl=60)


def placed(store: MemoryStore, spec: JobSpec = ONE_CPU, node: str = "n1") -> tuple[str, int]:
    job = store.submit(spec)
    attempt, why = store.reserve(job, node, "i1", {})
    assert attempt > 0, why
    return job, attempt


def test_it_conforms_to_the_store_protocol() -> None:
    assert isinstance(MemoryStore(), Store)


def test_a_node_is_never_over_committed() -> None:
    store = MemoryStore()
    up(store, cpus=2)
    placed(store)
    placed(store)
    third = store.submit(ONE_CPU)
    assert store.reserve(third, "n1", "i1", {}) == (0, "no room for cpus_m")
    assert sum(a["cpus_m"] for a in store.allocations("n1").values()) == 2000


def test_concurrent_reservations_never_over_commit() -> None:
    store = MemoryStore()
    up(store, cpus=3)
    jobs = [store.submit(ONE_CPU) for _ in range(12)]
    won: list[int] = []
    barrier = threading.Barrier(len(jobs))

    def reserve(job: str) -> None:
        barrier.wait()
        won.append(store.reserve(job, "n1", "i1", {})[0])

    threads = [threading.Thread(target=reserve, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for n in won if n > 0) == 3
    assert len(store.pending_ids()) == 9


def test_a_reservation_is_refused_on_a_draining_gone_or_other_incarnation_node() -> None:
    store = MemoryStore()
    up(store)
    job = store.submit(ONE_CPU)
    assert store.reserve(job, "n1", "i0", {}) == (0, "node is gone")
    assert store.reserve(job, "n2", "i1", {}) == (0, "node is gone")
    store.set_drain("n1")
    assert store.reserve(job, "n1", "i1", {}) == (0, "node is draining")
    store.set_drain("n1", on=False)
    assert store.reserve(job, "n1", "i1", {})[0] == 1
    assert store.reserve(job, "n1", "i1", {}) == (0, "job is PLACED")


def test_a_stale_attempt_cannot_finish_and_finishing_twice_changes_nothing() -> None:
    store = MemoryStore()
    up(store)
    job, attempt = placed(store)
    assert store.claim(job, attempt, "n1", "i1") == (True, "ok")
    lost = Outcome(EndReason.NODE_LOST)
    assert store.finish(job, attempt, "n1", lost) == (True, "PENDING")  # retried at once
    again, _ = store.reserve(job, "n1", "i1", {})
    assert again == attempt + 1
    done = Outcome(EndReason.SUCCEEDED)
    assert store.finish(job, attempt, "n1", done) == (False, "superseded")
    assert store.claim(job, attempt, "n1", "i1") == (False, "superseded")
    assert store.finish(job, again, "n1", done) == (True, "SUCCEEDED")
    before = store.get(job)
    assert store.finish(job, again, "n1", done) == (False, "job is SUCCEEDED")
    assert store.cancel(job) == "SUCCEEDED"
    assert store.get(job) == before
    assert [e["event"] for e in store.events(job=job)].count("finished") == 1


def test_a_counted_failure_backs_off_and_the_last_one_fails_the_job() -> None:
    store = MemoryStore()
    up(store)
    job = store.submit(ONE_CPU.model_copy(update={"max_retries": 1}))
    attempt, _ = store.reserve(job, "n1", "i1", {}, now=100.0)
    assert store.finish(job, attempt, "n1", Outcome(EndReason.ERROR), now=100.0) == (
        True, "PENDING")
    record = store.get(job)
    assert record is not None and record["not_before"] == 102.0 and record["retries"] == 1
    attempt, _ = store.reserve(job, "n1", "i1", {}, now=103.0)
    assert store.finish(job, attempt, "n1", Outcome(EndReason.ERROR, error="boom")) == (
        True, "FAILED")
    assert store.allocations("n1") == {}


def test_the_line_is_by_priority_then_submit_order() -> None:
    store = MemoryStore()
    low = store.submit(ONE_CPU.model_copy(update={"priority": -1}))
    first = store.submit(ONE_CPU)
    high = store.submit(ONE_CPU.model_copy(update={"priority": 5}))
    second = store.submit(ONE_CPU)
    assert store.pending_ids() == [high, first, second, low]
    assert store.pending_ids(start=1, limit=2) == [first, second]


def test_a_job_id_is_accepted_once() -> None:
    store = MemoryStore()
    store.submit(ONE_CPU, job_id="job-1")
    with pytest.raises(Refused, match="job id exists"):
        store.submit(ONE_CPU, job_id="job-1")
    assert not store.reject("job-1", "bad", submitted_by="default")
    with pytest.raises(NotFound):
        store.cancel("job-2")


def test_a_live_node_id_is_not_taken_by_another_incarnation() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    assert store.heartbeat({"node": "n1", "incarnation": "a",
                            "capacity": {"cpus": 1, "memory": 2**30}}, ttl=5) is False
    with pytest.raises(NodeIdTaken):
        store.heartbeat({"node": "n1", "incarnation": "b",
                         "capacity": {"cpus": 1, "memory": 2**30}}, ttl=5)
    now[0] = 6.0  # the lease lapsed
    assert store.live_reports() == []
    report: dict[str, Any] = {"node": "n1", "incarnation": "b",
                              "capacity": {"cpus": 1, "memory": 2**30}}
    assert store.heartbeat(report, ttl=5) is False
    assert store.heartbeat(report, ttl=5) is True
    assert [r["incarnation"] for r in store.live_reports()] == ["b"]
