"""The master: takes pending jobs, places them, reserves, publishes; reconciles what fails.

Each round is fetch → decide → apply (STYLE.md): read node reports and pending jobs from the
store, call the pure scheduler in `fleet.placement`, then reserve each decision atomically and only
then publish the Celery task to the chosen node's queue (late binding: a queue holds only what
its node has room for). `now` is passed in so tests control time.

A round runs on every wake-up (a job arrived or ended, a node joined), so under load it runs
once per job and its cost is the master's cost per job. It is kept independent of the length
of the queue: a pending job's immutable part (request, priority, seq) is read from the store once
and kept while the job stays pending, only the head of the line (`PENDING_WINDOW` jobs) is
considered (further only while none of it fits and a node has room), and the reasons of
waiting jobs (`fleet explain`, ~35 µs each to compose) are recomputed and written at most once
a second (for the first `EXPLAIN_WINDOW` in line) unless the queue is short. The lease is renewed,
and reserved-but-unclaimed jobs are looked for, on timers rather than every round.

The store is any `fleet.store.protocol.Store`: Redis (`RedisStore`, what `fleet master` runs) or
the in-memory twin (`MemoryStore`, for unit tests of this round). Holding the lease and the loop
around rounds are fleet.master.lead's; failure handling (lost nodes, unclaimed jobs) is
fleet.master.reconcile's.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.result import denied_join_result

from fleet.broker import RUN_TASK, task_id, task_payload
from fleet.master.bundles import BundleSweep
from fleet.master.intake import Ingest
from fleet.master.lead import Leader
from fleet.master.reconcile import Publish, RoundReport, republish_unclaimed, requeue_lost
from fleet.placement import NodeView, PolicyState, Request, has_room
from fleet.placement.policies import POLICIES
from fleet.placement.queue import PendingJob, RunningJob, schedule_round
from fleet.resources import Resources
from fleet.settings import BadSetting, Settings
from fleet.states import JobState
from fleet.store import keys, quarantine, records
from fleet.store.protocol import Store
from fleet.store.redis_store import RedisStore

__all__ = ["Master", "RoundReport", "PENDING_WINDOW"]

log = logging.getLogger("fleet.master")

UNCLAIMED_AFTER_S = 30.0  # a reserved job not claimed by then is published again
RECONCILE_EVERY_S = 1.0  # how often to look for such jobs
PENDING_WINDOW = 32  # pending jobs read per round: the head of the line (more if it is stuck)
EXPLAIN_WINDOW = 1000  # pending jobs read by a round that gives reasons
EXPLAIN_EVERY_S = 1.0  # waiting reasons recomputed at most this often...
EXPLAIN_ALWAYS_UP_TO = 16  # ...unless this few jobs wait


class Master(Leader):
    """Places pending jobs on a store: `Master(settings, store, publish)`, or, as `fleet
    master` runs it, `Master(settings, redis_client, celery_app)`."""

    def __init__(
        self, settings: Settings, store: Store | redis.Redis, app: Celery | Publish | None = None,
        *, master_id: str | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store: Store = RedisStore(store) if isinstance(store, redis.Redis) else store
        self.publish: Publish = celery_publisher(app) if isinstance(app, Celery) else \
            app or _nowhere
        self.intake = Ingest(self.store, settings)  # producers' requests, validated
        self.bundles = BundleSweep(self.store, settings.bundle_retention)
        self.id = master_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = self.store.lease(self.id, settings.master_lease_ttl)
        self.policy_state = PolicyState(rng=np.random.default_rng())
        self._waiting_written: dict[str, str] = {}
        self._reconciled_at = -math.inf
        self._explained_at = -math.inf
        # Pending jobs as read once from the store (what decides placement never changes while
        # a job is pending); entries leave when the job leaves the pending set or we reserve it.
        self._pending: dict[str, tuple[PendingJob, float]] = {}
        self.repair = self.store.repairs(settings)  # what was written over
        self._guarded_at = -math.inf

    def forget_round(self) -> None:
        self._pending.clear()

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
            republish_unclaimed(self.store, self.publish, now, older_than=now,
                                report=report)  # a takeover
            self._reconciled_at = now
            self._guarded_at = -math.inf  # guard and publish the settings in this round
        if not 0 <= now - self._guarded_at < RECONCILE_EVERY_S:
            self._guarded_at = now
            self.repair.guard_keys()
            self._publish_settings()
            self.bundles.maybe_run(now)  # stored bundles no unfinished job uses, long idle
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
            requeue_lost(self.store, self.repair, states, now, report)
        if now - self._reconciled_at >= RECONCILE_EVERY_S:
            republish_unclaimed(self.store, self.publish, now,
                                older_than=now - UNCLAIMED_AFTER_S, report=report)
            self.repair.check_allocations(states)
            self._reconciled_at = now
        self._schedule(states, head, size, explain, now, report)
        self.store.flush_notes()
        return report

    # -- decide + apply ----------------------------------------------------------------------
    def _publish_settings(self) -> None:
        """Keep this master's fleet-wide settings published (fleet.store.published): the
        leader's are the fleet's, so that nodes and producers check what its intake checks;
        a deleted or written-over copy is written again within a second."""
        try:
            current = self.store.published_settings()
        except BadSetting:
            current = None
        if current != self.settings.published():
            self.store.publish_settings(self.settings)
            log.info("published the fleet's settings: %s", self.settings.published())

    def _read(self, size: int, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """The nodes' states and the head of the line (`size` pending jobs; those not cached
        are read in full and cached), in as few round trips as the store allows. A line member
        that cannot be placed leaves the line."""
        states, head, read = self.store.read_round(size, self._pending)
        self._refresh_pending(head, len(head) < size, read=self._placeable(read, now))
        return states, head

    def _placeable(
        self, read: dict[str, dict[str, Any] | str | None], now: float,
    ) -> list[dict[str, Any]]:
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
        self, states: list[dict[str, Any]], head: list[str], size: int, explain: bool, now: float,
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
            RunningJob(id=job, node=s["node"], request=Request.of(Resources.from_wire(a)),
                       est_end=None)
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
            if result.placements or whole or not has_room(nodes):
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
            self.publish(job.id, attempt, node, incarnations[node])
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

    def _refresh_pending(
        self, ids: list[str], whole: bool, read: list[dict[str, Any]] | None = None,
    ) -> None:
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

    def _write_waiting(self, waiting: dict[str, str]) -> None:
        changed = {k: v for k, v in waiting.items() if self._waiting_written.get(k) != v}
        self.store.set_waiting(changed)
        self._waiting_written = dict(waiting)


def celery_publisher(app: Celery) -> Publish:
    """Send an attempt's task to its node's queue. Denied a join, Celery does not subscribe to
    the task's result channel (and unsubscribe when the result object is dropped), two pub/sub
    commands per job for a result the master never reads; the worker still stores it (Flower
    and `AsyncResult` read it)."""

    def publish(job_id: str, attempt: int, node: str, incarnation: str) -> None:
        with denied_join_result():
            app.send_task(
                RUN_TASK,
                kwargs={"payload": task_payload(job_id, attempt, node, incarnation)},
                queue=keys.node_queue(node),
                task_id=task_id(job_id, attempt),
                shadow=job_id.rsplit("-", 1)[0],  # Flower lists the task under the job's name
            )

    return publish


def _nowhere(job_id: str, attempt: int, node: str, incarnation: str) -> None:
    """A master given no publisher (a test of its round) sends nothing."""


def _pending_job(job: dict[str, Any]) -> PendingJob:
    """Raises ValueError (or records.BadRecord) for a record no placement can use."""
    spec = job["spec"]
    if spec.get("policy") is not None and spec["policy"] not in POLICIES:
        raise records.BadRecord("job", "spec.policy", f"unknown policy {spec['policy'][:40]!r}")
    return PendingJob(
        id=job["id"],
        request=Request.of(Resources.parse(spec["resources"]), spec.get("node_selector")),
        priority=job["priority"],
        seq=job["seq"],
        submitted_at=job["submitted_at"] or 0.0,
        policy=spec.get("policy"),
        est_duration=float(spec.get("timeout") or 0) or None,
    )


NO_NODES = "no live nodes"


def _not_taking_work(states: list[dict[str, Any]]) -> str:
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
