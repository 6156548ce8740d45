"""A full master round on a store: the same test body on the in-memory store and on Redis.

Submit (through the Client's intake) → place (the master's real round) → claim → finish, a
cancel of a pending and of a running job, and the fencing that refuses a stale attempt's
finish. The memory twin must answer every step as the Lua scripts do; the Redis param starts
its own server, as the integration tests do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fleet.client import NOT_ACCEPTED, Client
from fleet.master.loop import Master
from fleet.settings import Settings
from fleet.spec import JobSpec
from fleet.states import EndReason
from fleet.store.jobstore import Outcome
from fleet.store.protocol import Store

NOOP = JobSpec(name="noop", entrypoint="workers.jobs.synthetic:noop",
               resources={"cpus": 1, "memory": "100Mi"})
GIB = 2**30


def node_report(node: str, incarnation: str, cpus: float = 1.0) -> dict[str, Any]:
    return {"node": node, "incarnation": incarnation,
            "capacity": {"cpus": cpus, "memory": GIB, "gpus": 0}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", heartbeat_ttl=3.0)


class Published:
    """The master's publisher: records each (job, attempt, node, incarnation) it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str, str]] = []

    def __call__(self, job_id: str, attempt: int, node: str, incarnation: str) -> None:
        self.sent.append((job_id, attempt, node, incarnation))


def test_a_master_round_places_and_the_attempt_runs_to_its_end(
        store: Store, settings: Settings) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    first = client.submit(NOOP)
    second = client.submit(NOOP)
    assert client.status(first)["waiting"] == NOT_ACCEPTED  # in the intake: no master yet
    published = Published()
    master = Master(settings, store, published)

    report = master.step(time.time())
    assert report is not None and report.placed == [(first, "n1")]  # one CPU: one job
    assert client.status(second)["state"] == "PENDING"
    assert store.pending_ids() == [second]
    (job, attempt, node, incarnation), = published.sent
    assert (job, attempt, node, incarnation) == (first, 1, "n1", "i1")
    assert store.allocations("n1")[first]["cpus_m"] == 1000

    ok, why, spec = store.claim_spec(first, attempt, node, incarnation)  # claim = start
    assert (ok, why) == (True, "ok") and spec is not None
    assert spec["entrypoint"] == NOOP.entrypoint
    assert store.claim(first, attempt, node, incarnation) == (False, "job is RUNNING")
    assert store.claim(first, attempt, node, "i0") == (False, "superseded")
    assert store.progress(first, attempt, {"step": 1, "metrics": {"loss": 0.5}})
    assert not store.progress(first, attempt + 1, {"step": 2, "metrics": {"loss": 0.4}})

    done = Outcome(EndReason.SUCCEEDED, result={"ok": 1})
    assert store.finish(first, attempt + 1, node, done) == (False, "superseded")  # fenced
    assert store.finish(first, attempt, node, done) == (True, "SUCCEEDED")
    assert store.finish(first, attempt, node, done) == (False, "job is SUCCEEDED")  # once
    final = client.status(first)
    assert (final["state"], final["result"], final["progress"]["step"]) == ("SUCCEEDED",
                                                                            {"ok": 1}, 1)
    assert [a["end_reason"] for a in final["attempts"]] == ["SUCCEEDED"]
    assert store.allocations("n1") == {}

    report = master.step(time.time() + 0.01)  # the freed CPU goes to the second job
    assert report is not None and report.placed == [(second, "n1")]
    assert client.cancel(second, wait=0) == "CANCELLING"  # asked; the master applies it
    master.step(time.time() + 0.02)
    assert client.status(second)["state"] == "CANCELLED"
    assert store.allocations("n1") == {}
    assert [e["event"] for e in store.events(job=second)] == [
        "submitted", "placed", "finished"]


def test_the_client_reads_what_the_round_wrote(store: Store, settings: Settings) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=60)
    client = Client(settings, store=store)
    assert client.master_status()["up"] is False
    job = client.submit(NOOP)
    master = Master(settings, store, Published())
    master.step(time.time())
    assert client.master_status()["up"] is True
    assert client.master_status()["leader"] == master.id
    assert [n["node"] for n in client.nodes()] == ["n1"]
    assert client.nodes()[0]["reserved"]["cpus"] == 1.0
    assert store.claim(job, 1, "n1", "i1") == (True, "ok")
    assert store.progress_many(job, 1, [{"step": 1, "metrics": {"loss": 1.0}},
                                        {"step": 2, "metrics": {"loss": 0.5}}])
    assert [m["step"] for m in client.metrics(job)] == [1, 2]
    assert [m["step"] for m in client.metrics(job, start=1)] == [2]
    assert [j["id"] for j in client.jobs()] == [job]
    assert [e["event"] for e in store.events(limit=2)] == ["placed", "started"]
    since = store.last_event_id()
    assert store.events_after(since) == []
    store.finish(job, 1, "n1", Outcome(EndReason.SUCCEEDED))
    assert [(e["event"], e["state"]) for e in store.events_after(since)] == [
        ("finished", "SUCCEEDED")]


def test_a_running_job_is_cancelled_through_its_supervisor(
        store: Store, settings: Settings) -> None:
    store.heartbeat(node_report("n1", "i1", cpus=2), ttl=60)
    client = Client(settings, store=store)
    job = client.submit(NOOP)
    published = Published()
    master = Master(settings, store, published)
    master.step(time.time())
    (_, attempt, node, incarnation), = published.sent
    assert store.claim(job, attempt, node, incarnation) == (True, "ok")
    pending = client.submit(NOOP.model_copy(update={"resources": NOOP.resources.model_copy(
        update={"cpus": 2.0})}))  # waits: the node has one CPU left
    master.step(time.time() + 0.01)
    assert store.pending_ids() == [pending]

    assert store.cancel(pending) == "CANCELLED"
    assert store.cancel(job) == "CANCELLING"
    assert store.cancel_requested(job)
    # the supervisor stops the attempt; a failure seen meanwhile still ends it CANCELLED
    assert store.finish(job, attempt, node, Outcome(EndReason.ERROR)) == (True, "CANCELLED")
    assert not store.cancel_requested(job)
    assert store.cancel(job) == "CANCELLED"
    assert store.pending_ids() == []


def test_a_lost_node_s_attempt_goes_back_in_line(store: Store, settings: Settings) -> None:
    store.heartbeat(node_report("n1", "i1"), ttl=0.3)
    client = Client(settings, store=store)
    job = client.submit(NOOP)
    master = Master(settings, store, Published())
    start = time.time()
    master.step(start)
    time.sleep(0.4)  # its lease lapses...
    store.heartbeat(node_report("n1", "i2"), ttl=60)  # ...and it comes back as a new incarnation
    report = master.step(start + settings.heartbeat_ttl + 1)
    assert report is not None and report.requeued == [(job, "n1")]
    report = master.step(start + settings.heartbeat_ttl + 2)  # no backoff: not its fault
    assert report is not None and report.placed == [(job, "n1")]  # on the new incarnation
    attempts = client.status(job)["attempts"]
    assert [(a["attempt"], a["end_reason"], a["incarnation"]) for a in attempts] == [
        (1, "NODE_LOST", "i1"), (2, None, "i2")]
