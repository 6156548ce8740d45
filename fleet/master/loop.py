"""The master: takes pending jobs, places them, reserves, publishes; reconciles what fails.

Each round is fetch → decide → apply (STYLE.md): read node reports and pending jobs from Redis,
call the pure scheduler in `fleet.placement`, then reserve each decision atomically and only
then publish the Celery task to the chosen node's queue (late binding: a queue holds only what
its node has room for). `now` is passed in so tests control time.

A round runs on every wake-up (a job arrived or ended, a node joined), so under load it runs
once per job and its cost is the master's cost per job. It is kept independent of the length
of the queue: a pending job's immutable part (request, priority, seq) is read from Redis once
and kept while the job stays pending, only the head of the line (`PENDING_WINDOW` jobs) is
considered (further only while none of it fits and a node has room), and the reasons of
waiting jobs (`fleet explain`, ~35 µs each to compose) are recomputed and written at most once
a second (for the first `EXPLAIN_WINDOW` in line) unless the queue is short. The lease is renewed,
and reserved-but-unclaimed jobs are looked for, on timers rather than every round.

Failure handling lives here too: a node whose lease lapsed (or that came back as a new
incarnation) has every attempt it held ended as NODE_LOST, which sends the job back to pending
as a new attempt; a reserved job nobody claimed (the master died between reserve and publish,
or the message was lost) is published again, a duplicate being harmless thanks to claim fencing.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import redis
from celery import Celery
from celery.result import denied_join_result

from fleet.store import keys, quarantine, records, registry
from fleet.broker import RUN_TASK, task_id, task_payload
from fleet.master.intake import Doorbell, Ingest
from fleet.store.jobstore import JobStore, Outcome
from fleet.master.lease import Lease
from fleet.placement import NodeView, PolicyState, Request
from fleet.placement.nodes import CPUS, MEMORY
from fleet.placement.policies import POLICIES
from fleet.placement.queue import PendingJob, RunningJob, schedule_round
from fleet.master.repair import Repairer
from fleet.settings import Settings
from fleet.states import EndReason, JobState

log = logging.getLogger("fleet.master")

UNCLAIMED_AFTER_S = 30.0  # a reserved job not claimed by then is published again
RECONCILE_EVERY_S = 1.0  # how often to look for such jobs
LEASE_RENEW_S = 1.0  # the lease (settings.master_lease_ttl) is renewed at most this often
PENDING_WINDOW = 32  # pending jobs read per round: the head of the line (more if it is stuck)
EXPLAIN_WINDOW = 1000  # pending jobs read by a round that gives reasons
CPU_EPS = 1e-6
EXPLAIN_EVERY_S = 1.0  # waiting reasons recomputed at most this often...
EXPLAIN_ALWAYS_UP_TO = 16  # ...unless this few jobs wait
ERROR_LOG_EVERY_S = 10.0  # a round that fails logs its traceback at most this often


@dataclass
class RoundReport:
    placed: list[tuple[str, str]] = field(default_factory=list)  # (job, node)
    waiting: dict[str, str] = field(default_factory=dict)
    requeued: list[tuple[str, str]] = field(default_factory=list)  # (job, dead node)
    republished: list[str] = field(default_factory=list)


class Master:
    def __init__(
        self, settings: Settings, client: redis.Redis, app: Celery, *, master_id: str | None = None
    ) -> None:
        self.settings = settings
        self.r = client
        self.app = app
        self.store = JobStore(client)
        self.intake = Ingest(client, self.store, settings)  # producers' requests, validated
        self.id = master_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = Lease(client, keys.MASTER_LEASE, self.id, settings.master_lease_ttl,
                           seen_key=keys.MASTER_SEEN)
        self.policy_state = PolicyState(rng=np.random.default_rng())
        self._leading = False
        self._connected_since: float | None = None
        self._waiting_written: dict[str, str] = {}
        self._renewed_at = -math.inf
        self._reconciled_at = -math.inf
        self._explained_at = -math.inf
        # Pending jobs as read once from Redis (what decides placement never changes while a
        # job is pending); entries leave when the job leaves the pending set or we reserve it.
        self._pending: dict[str, tuple[PendingJob, float]] = {}
        self.repair = Repairer(client, self.store, settings)  # what was written over
        self._guarded_at = -math.inf
        self._error_logged_at = -math.inf

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Lead or stand by until `stop` is set; Redis outages are waited out, not fatal."""
        Doorbell(self.r).start(stop)  # an intake entry wakes the loop below at once
        while not stop.is_set():
            try:
                self.step(time.time())
                self._wait(stop, interval)
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError) as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                self._leading = False
                self._connected_since = None
                stop.wait(1.0)
            except Exception as exc:  # a bug, or a record no check foresaw: this round only
                self._round_failed(exc)
                stop.wait(min(1.0, interval))
        if self._leading:
            self.lease.release()

    def _wait(self, stop: threading.Event, interval: float) -> None:
        """Until poked (a job arrived or ended) or `interval` passed."""
        try:
            self.r.blpop([keys.WAKE], timeout=interval)
        except redis.exceptions.ResponseError:  # written over: the leader moves it aside
            stop.wait(interval)

    def _round_failed(self, exc: Exception) -> None:
        """Log (the traceback at most every ERROR_LOG_EVERY_S) and count a failed round; the
        next round starts afresh, from what Redis holds."""
        self._pending.clear()
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_EVERY_S:
            self._error_logged_at = now
            log.exception("a master round failed; continuing")
        else:
            log.warning("a master round failed: %s: %s", type(exc).__name__, str(exc)[:200])
        try:
            self.r.incr(keys.MASTER_ERRORS)
        except redis.exceptions.RedisError:
            pass  # counted next time, if the key is moved aside meanwhile

    def step(self, now: float) -> RoundReport | None:
        """One round if we lead; None when another master holds the lease."""
        if not self._hold_lease(now):
            if self._leading:
                log.warning("lost the master lease")
            self._leading = False
            return None
        report = RoundReport()
        if not self._leading:
            log.info("master %s leads", self.id)
            self._leading = True
            self._connected_since = now
            self._pending.clear()  # another master may have placed them meanwhile
            self._waiting_written.clear()
            self._republish_unclaimed(now, older_than=now, report=report)  # a takeover
            self._reconciled_at = now
        if not 0 <= now - self._guarded_at < RECONCILE_EVERY_S:
            self._guarded_at = now
            self.repair.guard_keys()
        self.intake.run(now)  # requests from the intakes become jobs (or cancels) first
        # A round that explains (about once a second) reads further down the line, to give
        # every waiting job its reason.
        explain = now - self._explained_at >= EXPLAIN_EVERY_S or now < self._explained_at
        size = EXPLAIN_WINDOW if explain else PENDING_WINDOW
        states, head = self._read(size, now)
        self.repair.nodes(states, now)
        if now - (self._connected_since or now) >= self.settings.heartbeat_ttl:
            # Only after watching for one full TTL: leases that lapsed while Redis (or this
            # master) was away are not deaths; live nodes renew them within one heartbeat.
            self._requeue_lost(states, now, report)
        if now - self._reconciled_at >= RECONCILE_EVERY_S:
            self._republish_unclaimed(now, older_than=now - UNCLAIMED_AFTER_S, report=report)
            self.repair.check_allocations(states)
            self._reconciled_at = now
        self._schedule(states, head, size, explain, now, report)
        quarantine.found.flush(self.r)
        return report

    def _hold_lease(self, now: float) -> bool:
        """Renew the lease if it was renewed over LEASE_RENEW_S ago (it lasts several times
        that); a master that stops renewing loses it to a standby within its TTL."""
        if self._leading and 0 <= now - self._renewed_at < LEASE_RENEW_S:
            return True
        try:
            held = self.lease.acquire()
        except redis.exceptions.ResponseError:
            held = False
        if not held:
            foreign = self.lease.foreign()
            if foreign is not None:  # no master wrote it: it would keep every master out
                quarantine.note("lease", keys.MASTER_LEASE, foreign)
                quarantine.quarantine_key(self.r, keys.MASTER_LEASE)
            return False
        self._renewed_at = now
        return True

    # -- decide + apply ----------------------------------------------------------------------
    def _read(self, size: int, now: float) -> tuple[list[dict], list[str]]:
        """The nodes' states and the head of the line (`size` pending jobs; those not cached
        are read in full and cached) in two round trips: the node names with the line, then
        the nodes' records with the new jobs. A key of the wrong type reads as empty (the
        guard moves it aside); a line member that cannot be placed leaves the line."""
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(keys.NODES)
        pipe.zrange(keys.PENDING, 0, size - 1)
        members, line = pipe.execute(raise_on_error=False)
        members = [] if isinstance(members, Exception) else members
        line = [] if isinstance(line, Exception) else line
        nodes, head = registry.names(members), [keys.decode(j) for j in line]
        missing = [j for j in head if j not in self._pending]
        pipe = self.r.pipeline(transaction=False)
        registry.read_states(pipe, nodes)
        for job_id in missing:
            pipe.hgetall(keys.job(job_id))
        raw = pipe.execute(raise_on_error=False)
        jobs = raw[registry.READS_PER_NODE * len(nodes):]
        read = {j: self.store.decode_read(j, r) for j, r in zip(missing, jobs, strict=True)}
        self._refresh_pending(head, len(head) < size, read=self._placeable(read, now))
        return registry.states_from(nodes, raw), head

    def _placeable(self, read: dict[str, dict | str | None], now: float) -> list[dict]:
        """The records of `read` that are pending jobs; the rest leave the line (a pending
        job whose record is malformed ends FAILED, saying why)."""
        jobs = []
        for job_id, job in read.items():
            why = "" if isinstance(job, dict) or job is None else job
            if isinstance(job, dict) and job["state"] == JobState.PENDING.value:
                try:
                    _pending_job(job)
                    jobs.append(job)
                    continue
                except (ValueError, records.BadRecord) as exc:
                    why = f"unreadable job record: {exc}"
                    quarantine.note("job", keys.job(job_id), why)
            try:
                self.store.drop_pending(job_id, why, now)
            except redis.exceptions.ResponseError as exc:
                quarantine.note("pending", keys.PENDING, exc)
        return jobs

    def _schedule(
        self, states: list[dict], head: list[str], size: int, explain: bool, now: float,
        report: RoundReport,
    ) -> None:
        # A node with an unreadable allocation is not placed on until it is repaired: what it
        # holds is unknown, and a node must never look emptier than it is. A node that cannot
        # write its disk takes no job until it can.
        live = [s["report"] for s in states
                if s["report"] and not s["draining"] and not s["bad_alloc"]
                and s["report"].get("healthy", True) is not False]
        incarnations = {r["node"]: r["incarnation"] for r in live}
        nodes = NodeView.from_reports(live)
        running = [
            RunningJob(id=job, node=s["node"], request=_request_from_alloc(a), est_end=None)
            for s in states
            for job, a in s["alloc"].items()
        ]
        # The head of the line; the next stretch too while nothing in it could be placed and
        # some node has room (so capacity never idles while a job that fits waits further on).
        ids, whole = list(head), len(head) < size  # whole: the rest of the line has been read
        while True:
            pending, backing_off = self._ready(ids, now)
            explain = explain or (whole and len(ids) <= EXPLAIN_ALWAYS_UP_TO)
            result = schedule_round(
                nodes, pending, running, policy=self.settings.policy, state=self.policy_state,
                now=now, explain=explain,
            )
            if result.placements or whole or not _has_room(nodes):
                break
            window = self.store.pending_ids(start=len(ids), limit=size)
            ids += window
            whole = len(window) < size
            self._refresh_pending(ids, whole)
        if not ids:
            return
        if explain:
            self._explained_at = now
            report.waiting.update(backing_off)
            away = _not_taking_work(states)
            for waiter, why in result.waiting.items():
                if away and why == NO_NODES:
                    why = f"no node takes work now: {away}"
                if waiter in result.positions:
                    why = f"#{result.positions[waiter]} in line: {why}"
                report.waiting[waiter] = why
        for job, decision in result.placements:
            node = decision.node
            assert node is not None
            self._pending.pop(job.id, None)  # if it comes back (a retry), it is read anew
            try:
                attempt, why = self.store.reserve(
                    job.id, node, incarnations[node], decision.as_dict(), now
                )
            except redis.exceptions.ResponseError as exc:  # a record written over meanwhile
                quarantine.note("job", keys.job(job.id), exc)
                attempt, why = 0, f"unreadable record ({exc})"
            if attempt <= 0:
                report.waiting[job.id] = f"placement on {node} refused: {why}"
                continue
            self._publish(job.id, attempt, node, incarnations[node])
            report.placed.append((job.id, node))
        if explain:
            self._write_waiting(report.waiting)
        elif report.waiting:  # refusals: say so now, keep the other reasons
            self.store.set_waiting(report.waiting)
            self._waiting_written.update(report.waiting)

    def _ready(self, ids: list[str], now: float) -> tuple[list[PendingJob], dict[str, str]]:
        """The jobs of `ids` that may be placed now, and why the others may not."""
        pending: list[PendingJob] = []
        backing_off: dict[str, str] = {}
        for job_id in ids:
            cached = self._pending.get(job_id)
            if cached is None:  # its record vanished: nothing to place
                continue
            job, not_before = cached
            if not_before <= now:
                pending.append(job)
            else:
                backing_off[job_id] = "backing off before a retry"
        return pending, backing_off

    def _refresh_pending(self, ids: list[str], whole: bool, read: list[dict] | None = None) -> None:
        """Read the jobs of `ids` not known yet (one round trip), unless the caller `read` them.
        Forget the ones that left the line: all not in `ids` when it is the whole line, else
        (a longer line was read before) only once the cache outgrows what a round reads."""
        if whole or len(self._pending) > 2 * EXPLAIN_WINDOW:
            current = set(ids)
            for gone in [j for j in self._pending if j not in current]:
                del self._pending[gone]
        if read is None:
            missing = [j for j in ids if j not in self._pending]
            read = self._placeable(self.store.read_many(missing), time.time()) if missing else []
        for job in read:
            if job["state"] == JobState.PENDING.value:
                self._pending[job["id"]] = (_pending_job(job), job["not_before"] or 0.0)

    def _publish(self, job_id: str, attempt: int, node: str, incarnation: str) -> None:
        """Send the attempt's task to its node's queue. Denied a join, Celery does not
        subscribe to the task's result channel (and unsubscribe when the result object is
        dropped), two pub/sub commands per job for a result the master never reads; the
        worker still stores it (Flower and `AsyncResult` read it)."""
        with denied_join_result():
            self.app.send_task(
                RUN_TASK,
                kwargs={"payload": task_payload(job_id, attempt, node, incarnation)},
                queue=keys.node_queue(node),
                task_id=task_id(job_id, attempt),
                shadow=job_id.rsplit("-", 1)[0],  # Flower lists the task under the job's name
            )

    def _write_waiting(self, waiting: dict[str, str]) -> None:
        changed = {k: v for k, v in waiting.items() if self._waiting_written.get(k) != v}
        self.store.set_waiting(changed)
        self._waiting_written = dict(waiting)

    # -- reconcile ---------------------------------------------------------------------------
    def _requeue_lost(self, states: list[dict], now: float, report: RoundReport) -> None:
        """End every attempt held by a dead node, or by an older incarnation of a live one."""
        lost = [(s["node"], job, a) for s in states
                if s["report"] is not None or s["unreadable"] is None  # unreadable: not dead
                for job, a in s["alloc"].items()
                if s["report"] is None or a["incarnation"] != s["report"]["incarnation"]]
        backed = self.repair.backed(lost, states)
        for s in states:
            node, live = s["node"], s["report"]
            if live is None and s["unreadable"] is not None:
                continue  # its lease holds; what it reports cannot be read (yet)
            for job, alloc in s["alloc"].items():
                if live is not None and alloc.get("incarnation") == live["incarnation"]:
                    continue
                if (node, job) not in backed:  # an entry its job's record does not back
                    self.repair.entry(node, job)
                    continue
                try:
                    applied, state = self.store.finish(
                        job, int(alloc["attempt"]), node,
                        Outcome(EndReason.NODE_LOST, error=f"node {node} lost"), now,
                    )
                except redis.exceptions.ResponseError as exc:  # its job record is not a hash
                    quarantine.note("job", keys.job(job), exc)
                    applied, state = False, "unreadable"
                if not applied:  # a stale entry the job has moved past: drop it
                    self.r.hdel(keys.node_alloc(node), job)
                report.requeued.append((job, node))
                log.warning("node %s lost: job %s -> %s", node, job, state)
            if live is None and not s["bad_alloc"]:
                registry.forget(self.r, node)

    def _republish_unclaimed(self, now: float, older_than: float, report: RoundReport) -> None:
        try:
            placing = self.store.placing(older_than)
        except redis.exceptions.ResponseError:  # not a zset: the guard moves it aside
            return
        for job_id in placing:
            try:
                job = self.store.get(job_id)
            except records.BadRecord:
                job = None
            if not job or job["state"] != JobState.PLACED.value:
                self.r.zrem(keys.PLACING, job_id)
                continue
            self._publish(job_id, job["attempt"], job["node"], job["incarnation"])
            self.r.zadd(keys.PLACING, {job_id: now})
            report.republished.append(job_id)


def _pending_job(job: dict) -> PendingJob:
    """Raises ValueError (or records.BadRecord) for a record no placement can use."""
    spec = job["spec"]
    if spec.get("policy") is not None and spec["policy"] not in POLICIES:
        raise records.BadRecord("job", "spec.policy", f"unknown policy {spec['policy'][:40]!r}")
    return PendingJob(
        id=job["id"],
        request=Request.from_resources(spec["resources"], spec.get("node_selector") or {}),
        priority=job["priority"],
        seq=job["seq"],
        submitted_at=job["submitted_at"] or 0.0,
        policy=spec.get("policy"),
        est_duration=float(spec.get("timeout") or 0) or None,
    )


def _has_room(nodes: NodeView) -> bool:
    """Some live node has CPU and memory left unreserved."""
    free = nodes.free()
    return bool(((free[:, CPUS] > CPU_EPS) & (free[:, MEMORY] > 0)).any())


NO_NODES = "no live nodes"


def _not_taking_work(states: list[dict]) -> str:
    """Live nodes placement leaves out, and why: the reason a job waits when none is left."""
    why = []
    for s in states:
        report = s["report"]
        if not report:
            continue
        if report.get("healthy", True) is False:
            why.append(f"{s['node']} unhealthy ({str(report.get('unhealthy_reason'))[:120]})")
        elif s["draining"]:
            why.append(f"{s['node']} draining")
        elif s["bad_alloc"]:
            why.append(f"{s['node']} allocations unreadable")
    return "; ".join(why)


def _request_from_alloc(alloc: dict) -> Request:
    return Request(
        cpus=alloc.get("cpus_m", 0) / 1000, memory=alloc.get("memory", 0), gpus=alloc.get("gpus", 0)
    )
