"""Self-fencing nodes (DESIGN.md, invariant 8), for real.

A job witnesses its own steps in a file outside fleet. Its node is cut off for 30 s three
ways: its worker SIGSTOPped, every process of the node SIGSTOPped, Redis unreachable from it
(through a proxy this test runs on loopback). Each time the job is re-placed on another node
after the heartbeat TTL (3 s here), and the checks are what the job itself wrote:

- the attempts' [first step, last step] intervals never intersect (0 s of overlap);
- one completion, counted once (SUCCEEDED, one "done" line);
- the resumed attempt started from a checkpoint committed while its writer was the job's
  live attempt (written before the master superseded it).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleet.drivers.base import NodeShape
from fleet.drivers.redis_server import RedisServer
from fleet.settings import Settings
from fleet.spec import JobSpec
from fleet.states import EndReason
from fleet.store import keys, registry
from fleet.store.jobstore import JobStore, Outcome
from fleet.units import parse_memory
from tests.integration.support import Fleet, eventually
from workers import checkpoint
from workers.attempt.commits import CheckpointCommits

pytestmark = pytest.mark.integration

PAUSE_S = 30.0
ENTRYPOINT = "tests.integration.fencing_job:witnessed_steps"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"allowlist": ["workers.jobs", "tests.integration.fencing_job"]})


# -- the job's own witness ------------------------------------------------------------------------
def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def intervals(lines: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """attempt -> (time of its first step, time of its last step)."""
    spans: dict[int, tuple[float, float]] = {}
    for line in lines:
        if "step" in line:
            first, last = spans.get(line["attempt"], (line["time"], line["time"]))
            spans[line["attempt"]] = (min(first, line["time"]), max(last, line["time"]))
    return spans


def overlap_seconds(spans: dict[int, tuple[float, float]]) -> float:
    """Seconds during which two attempts both ran, summed over every pair."""
    items = sorted(spans.values())
    return sum(max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
               for i, a in enumerate(items) for b in items[i + 1:])


def disjoint(spans: dict[int, tuple[float, float]]) -> bool:
    items = sorted(spans.values())
    return all(a[1] < b[0] for a, b in pairwise(items))


# -- ways to cut a node off -----------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children first found, then theirs), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            todo.extend(children)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class CuttableProxy:
    """A TCP forwarder on loopback to Redis that can go silent: `cut()` stops forwarding
    (connections stay open, bytes go nowhere, new ones are accepted and held), `mend()` drops
    every connection and forwards again. What a node sees of a network partition."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.add(client)
                if self.cut_off:
                    continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select(0.2):
                    if self.cut_off:
                        continue  # read nothing: the sender's data stays unanswered
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
                if self.cut_off:
                    time.sleep(0.05)
        except OSError:
            return
        finally:
            selector.close()
            for s in (a, b):
                s.close()

    def cut(self) -> None:
        self.cut_off = True

    def mend(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, set()
            for s in socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.cut_off = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.mend()


@pytest.fixture
def proxy(fleet: Fleet) -> Iterator[CuttableProxy]:
    target = urlsplit(fleet.server.url)
    p = CuttableProxy((target.hostname or "127.0.0.1", int(target.port or 6379)))
    yield p
    p.close()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


# -- one run ------------------------------------------------------------------------------------
def run_cut_off(fleet: Fleet, log: Path, cut: Callable[[], None], mend: Callable[[], None],
                victim_url: str | None = None) -> dict[str, Any]:
    """Run the witnessed job on node-1, cut node-1 off for PAUSE_S once the job is under way
    (node-2 ready to take over), and return what happened."""
    fleet.master()
    url = victim_url or fleet.server.url
    pid = fleet.driver.start_node("node-1", NodeShape(1.0, parse_memory("2Gi")), url, [0])
    fleet.nodes["node-1"] = pid
    fleet.wait_nodes({"node-1"})
    job_id = fleet.client.submit({
        "name": "witnessed", "entrypoint": ENTRYPOINT, "max_retries": 0,
        "resources": {"cpus": 1, "memory": "256Mi"}, "params": {"log": str(log)},
    })
    eventually(lambda: sum("step" in x for x in read_log(log)) >= 4, 60, what="4 steps done")
    fleet.node("node-2", cores=[1])  # where the job goes once node-1 is dead to the master
    assert fleet.client.status(job_id)["node"] == "node-1"
    cut_at = time.time()
    cut()
    try:
        eventually(lambda: fleet.client.status(job_id)["attempt"] >= 2, PAUSE_S,
                   what="the job re-placed")
        time.sleep(max(0.0, cut_at + PAUSE_S - time.time()))
    finally:
        mend()
    mended_at = time.time()
    final = fleet.wait_job(job_id, 120)
    time.sleep(3)  # a stale attempt that was not stopped would write again by now
    return {"job": job_id, "final": final, "attempts": fleet.client.status(job_id)["attempts"],
            "lines": read_log(log), "cut_at": cut_at, "mended_at": mended_at,
            "committed": fleet.client.store.committed_checkpoints(job_id)}


def check_no_overlap(run: dict[str, Any]) -> None:
    lines, attempts = run["lines"], run["attempts"]
    spans = intervals(lines)
    overlap = overlap_seconds(spans)
    first, later = spans[1], sorted(spans.items())[1:]
    steps = {a: [x["step"] for x in lines if x.get("attempt") == a and "step" in x] for a in spans}
    starts = [(x["attempt"], x["resumed"]) for x in lines if x.get("event") == "start"]
    print(f"overlap {overlap:.3f} s; attempt 1's last step {first[1] - run['cut_at']:+.2f} s "
          f"after the cut; the next attempt's first step {later[0][1][0] - first[1]:.2f} s "
          f"after it; steps {[(a, s[0], s[-1]) for a, s in steps.items()]}; starts {starts}"
          if later else f"overlap {overlap:.3f} s; one attempt only")
    assert run["final"]["state"] == "SUCCEEDED", run["final"]
    assert overlap == 0.0 and disjoint(spans), spans
    # one completion, counted once
    assert [a["end_reason"] for a in attempts].count("SUCCEEDED") == 1, attempts
    assert sum(x.get("event") == "done" for x in lines) == 1
    assert attempts[0]["end_reason"] == "NODE_LOST"
    # nothing of attempt 1 after the master superseded it
    superseded_at = attempts[0]["ended_at"]
    assert all(x["time"] < superseded_at for x in lines if x.get("attempt") == 1)
    # each later attempt resumed from a checkpoint committed by a then-live attempt
    for start in (x for x in lines if x.get("event") == "start" and x["attempt"] > 1):
        origin = start["resumed"]
        assert origin is not None, "the resumed attempt started from zero"
        writer = next(a for a in attempts if a["attempt"] == origin["attempt"])
        assert origin["time"] < (writer.get("ended_at") or float("inf"))
        assert origin["step"] <= max(x["step"] for x in lines
                                     if x.get("attempt") == origin["attempt"] and "step" in x)
        assert writer.get("committed_step", 0) >= origin["step"]
    assert run["committed"][0]["attempt"] == run["final"]["attempt"]


def test_a_paused_worker_stops_its_jobs_before_they_are_placed_again(
    fleet: Fleet, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"

    def worker() -> int:
        return fleet.nodes["node-1"]

    run = run_cut_off(fleet, log, lambda: os.kill(worker(), signal.SIGSTOP),
                      lambda: os.kill(worker(), signal.SIGCONT))
    check_no_overlap(run)
    # the job stopped itself within the fence: well before the lease could expire
    last = intervals(run["lines"])[1][1]
    assert last < run["cut_at"] + fleet.settings.heartbeat_ttl


@pytest.mark.parametrize("first", ["job", "worker"])
def test_a_whole_paused_node_does_not_run_on_when_it_resumes(
    fleet: Fleet, tmp_path: Path, first: str
) -> None:
    """Resumed job first, it must stop itself (its fork server has not run yet); resumed worker
    first, its renewal (Redis says the lease lapsed) must not revive the job."""
    log = tmp_path / "steps.log"
    frozen: list[int] = []

    def freeze() -> None:
        worker = fleet.nodes["node-1"]
        frozen[:] = [worker, *descendants(worker)]  # worker, fork server, job
        assert len(frozen) >= 3, frozen
        signal_all(frozen, signal.SIGSTOP)

    def thaw() -> None:
        signal_all(list(reversed(frozen)) if first == "job" else frozen, signal.SIGCONT)

    run = run_cut_off(fleet, log, freeze, thaw)
    check_no_overlap(run)


def test_a_node_cut_off_from_redis_stops_its_jobs(
    fleet: Fleet, proxy: CuttableProxy, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    run = run_cut_off(fleet, log, proxy.cut, proxy.mend,
                      victim_url=via(fleet.server.url, proxy.port))
    check_no_overlap(run)
    # node-1 came back: it heartbeats again through the mended proxy and takes work
    eventually(lambda: "node-1" in {n["node"] for n in fleet.client.nodes()}, 30,
               what="node-1 back")


# -- the fenced Redis steps, without processes ----------------------------------------------------
def test_only_the_current_attempt_can_commit_a_checkpoint(redis_server: RedisServer) -> None:
    r = redis_server.client()
    store = JobStore(r)
    registry.heartbeat(r, {"node": "n1", "incarnation": "a", "capacity": {"cpus": 2, "memory": 2**30}},
                       ttl=60)
    registry.heartbeat(r, {"node": "n2", "incarnation": "b", "capacity": {"cpus": 2, "memory": 2**30}},
                       ttl=60)
    job_id = store.submit(JobSpec.model_validate({
        "name": "c", "entrypoint": "workers.jobs.synthetic:noop",
        "resources": {"cpus": 1, "memory": "1Gi"}}))
    assert store.reserve(job_id, "n1", "a", {})[0] == 1
    assert store.commit_checkpoint(job_id, 1, "n1", "a", 3, "attempt-1/step-00000003") == (
        False, "job is PLACED")  # not claimed yet
    assert store.claim(job_id, 1, "n1", "a")[0]
    assert store.commit_checkpoint(job_id, 1, "n1", "a", 3, "attempt-1/step-00000003")[0]
    assert not store.commit_checkpoint(job_id, 1, "n1", "other", 6, "attempt-1/step-00000006")[0]
    # the master supersedes attempt 1 (its node lost); attempt 2 runs on n2
    store.finish(job_id, 1, "n1", Outcome(EndReason.NODE_LOST, error="node n1 lost"))
    assert store.reserve(job_id, "n2", "b", {})[0] == 2
    assert store.claim(job_id, 2, "n2", "b")[0]
    assert store.committed_checkpoints(job_id) == [
        {"attempt": 1, "step": 3, "dir": "attempt-1/step-00000003"}]
    # the superseded attempt writes on: nothing it says becomes the job's checkpoint
    assert store.commit_checkpoint(job_id, 1, "n1", "a", 9, "attempt-1/step-00000009") == (
        False, "superseded")
    assert store.commit_checkpoint(job_id, 2, "n2", "b", 6, "attempt-2/step-00000006")[0]
    assert [c["dir"] for c in store.committed_checkpoints(job_id)] == [
        "attempt-2/step-00000006", "attempt-1/step-00000003"]
    assert store.attempts(job_id)[1]["committed_step"] == 6


def test_a_heartbeat_says_whether_the_lease_held_or_had_lapsed(redis_server: RedisServer) -> None:
    r = redis_server.client()
    report = {"node": "n1", "incarnation": "a", "capacity": {"cpus": 1, "memory": 2**30}}
    assert registry.heartbeat(r, report, ttl=60) is False  # first: nothing held before
    assert registry.heartbeat(r, report, ttl=60) is True
    r.pexpire(keys.node("n1"), 1)  # its TTL runs out
    eventually(lambda: not r.exists(keys.node("n1")), 5, interval=0.01, what="the lease to expire")
    assert registry.heartbeat(r, report, ttl=60) is False


def test_a_worker_takes_over_its_own_earlier_incarnation_and_no_other(
    redis_server: RedisServer
) -> None:
    r = redis_server.client()
    report = {"node": "n1", "incarnation": "a", "capacity": {"cpus": 1, "memory": 2**30}}
    registry.heartbeat(r, report, ttl=60)
    again = {**report, "incarnation": "b"}
    with pytest.raises(registry.NodeIdTaken):  # a twin, not this worker rejoining
        registry.heartbeat(r, again, ttl=60)
    with pytest.raises(registry.NodeIdTaken):
        registry.heartbeat(r, again, ttl=60, replaces="c")
    assert registry.heartbeat(r, again, ttl=60, replaces="a") is False  # taken anew: fenced
    assert registry.heartbeat(r, again, ttl=60) is True
    assert keys.decode(r.hget(keys.node("n1"), "incarnation")) == "b"


def test_the_supervisor_commits_the_newest_announced_checkpoint_until_superseded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    r = redis_server.client()
    store = JobStore(r)
    registry.heartbeat(r, {"node": "n1", "incarnation": "a", "capacity": {"cpus": 2, "memory": 2**30}},
                       ttl=60)
    job_id = store.submit(JobSpec.model_validate({
        "name": "c", "entrypoint": "workers.jobs.synthetic:noop",
        "resources": {"cpus": 1, "memory": "1Gi"}}))
    store.reserve(job_id, "n1", "a", {})
    store.claim(job_id, 1, "n1", "a")
    commits = CheckpointCommits(store, job_id, 1, "n1", "a", tmp_path, [])
    for step in (1, 2, 3):
        checkpoint.save(commits.folder, step, lambda d: (d / "w").write_text("x"), keep=None)
    commits.announce(1)
    commits.announce(2)  # 1 was never committed and never will be: gone
    commits.announce("3")  # a job's word that is not a step
    commits.announce(7)  # names nothing published
    assert not (commits.folder / "step-00000001").exists() and commits.pending == 2
    assert commits.flush() and commits.pending is None
    assert store.committed_checkpoints(job_id)[0]["dir"] == "attempt-1/step-00000002"
    commits.announce(3)
    store.finish(job_id, 1, "n1", Outcome(EndReason.NODE_LOST, error="node n1 lost"))
    assert not commits.flush()  # superseded: its stop is asked, nothing committed
    assert store.committed_checkpoints(job_id)[0]["dir"] == "attempt-1/step-00000002"
    assert [c["dir"] for c in CheckpointCommits(
        store, job_id, 2, "n2", "b", tmp_path, store.committed_checkpoints(job_id)).restore] == [
        str(tmp_path / "attempt-1" / "step-00000002")]
