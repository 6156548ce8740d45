"""The master: takes pending jobs, places them, reserves, publishes; reconciles what fails.

Each round is fetch → decide → apply (STYLE.md): read node reports and pending jobs from Redis,
call the pure scheduler in `fleet.placement`, then reserve each decision atomically and only
then publish the Celery task to the chosen node's queue (late binding: a queue holds only what
its node has room for). `now` is passed in so tests control time.

Failure handling lives here too: a node whose lease lapsed (or that came back as a new
incarnation) has every attempt it held ended as NODE_LOST, which sends the job back to pending
as a new attempt; a reserved job nobody claimed (the master died between reserve and publish,
or the message was lost) is published again, a duplicate being harmless thanks to claim fencing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import redis
from celery import Celery

from fleet import keys, registry
from fleet.broker import RUN_TASK, task_id, task_payload
from fleet.jobstore import JobStore, Outcome
from fleet.lease import Lease
from fleet.placement import NodeView, PolicyState, Request
from fleet.placement.queue import PendingJob, RunningJob, schedule_round
from fleet.settings import Settings
from fleet.states import EndReason, JobState

log = logging.getLogger("fleet.master")

UNCLAIMED_AFTER_S = 30.0  # a reserved job not claimed by then is published again


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
        self.id = master_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = Lease(client, keys.MASTER_LEASE, self.id, settings.master_lease_ttl)
        self.policy_state = PolicyState(rng=np.random.default_rng())
        self._leading = False
        self._connected_since: float | None = None
        self._waiting_written: dict[str, str] = {}

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Lead or stand by until `stop` is set; Redis outages are waited out, not fatal."""
        while not stop.is_set():
            try:
                self.step(time.time())
                self.r.blpop([keys.WAKE], timeout=interval)
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError) as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                self._leading = False
                self._connected_since = None
                stop.wait(1.0)
        if self._leading:
            self.lease.release()

    def step(self, now: float) -> RoundReport | None:
        """One round if we lead; None when another master holds the lease."""
        if not self.lease.acquire():
            if self._leading:
                log.warning("lost the master lease")
            self._leading = False
            return None
        report = RoundReport()
        if not self._leading:
            log.info("master %s leads", self.id)
            self._leading = True
            self._connected_since = now
            self._republish_unclaimed(now, older_than=now, report=report)  # a takeover
        states = registry.node_states(self.r)
        if now - (self._connected_since or now) >= self.settings.heartbeat_ttl:
            # Only after watching for one full TTL: leases that lapsed while Redis (or this
            # master) was away are not deaths; live nodes renew them within one heartbeat.
            self._requeue_lost(states, now, report)
        self._republish_unclaimed(now, older_than=now - UNCLAIMED_AFTER_S, report=report)
        self._schedule(states, now, report)
        return report

    # -- decide + apply ----------------------------------------------------------------------
    def _schedule(self, states: list[dict], now: float, report: RoundReport) -> None:
        pending_ids = self.store.pending_ids()
        if not pending_ids:
            return
        jobs = self.store.get_many(pending_ids)
        pending = [_pending_job(j) for j in jobs if (j["not_before"] or 0) <= now]
        for j in jobs:
            if (j["not_before"] or 0) > now:
                report.waiting[j["id"]] = j.get("waiting") or "backing off before a retry"
        live = [s["report"] for s in states if s["report"] and not s["draining"]]
        incarnations = {r["node"]: r["incarnation"] for r in live}
        nodes = NodeView.from_reports(live)
        running = [
            RunningJob(id=job, node=s["node"], request=_request_from_alloc(a), est_end=None)
            for s in states
            for job, a in s["alloc"].items()
        ]
        result = schedule_round(
            nodes, pending, running, policy=self.settings.policy, state=self.policy_state,
            now=now,
        )
        report.waiting.update(
            {job: f"#{result.positions[job]} in line: {why}" if job in result.positions else why
             for job, why in result.waiting.items()})
        for job, decision in result.placements:
            node = decision.node
            assert node is not None
            attempt, why = self.store.reserve(
                job.id, node, incarnations[node], decision.as_dict(), now
            )
            if attempt <= 0:
                report.waiting[job.id] = f"placement on {node} refused: {why}"
                continue
            self._publish(job.id, attempt, node, incarnations[node])
            report.placed.append((job.id, node))
        self._write_waiting(report.waiting)

    def _publish(self, job_id: str, attempt: int, node: str, incarnation: str) -> None:
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
        for s in states:
            node, live = s["node"], s["report"]
            for job, alloc in s["alloc"].items():
                if live is not None and alloc.get("incarnation") == live["incarnation"]:
                    continue
                applied, state = self.store.finish(
                    job, int(alloc["attempt"]), node,
                    Outcome(EndReason.NODE_LOST, error=f"node {node} lost"), now,
                )
                if not applied:  # a stale entry the job has moved past: drop it
                    self.r.hdel(keys.node_alloc(node), job)
                report.requeued.append((job, node))
                log.warning("node %s lost: job %s -> %s", node, job, state)
            if live is None:
                registry.forget(self.r, node)

    def _republish_unclaimed(self, now: float, older_than: float, report: RoundReport) -> None:
        for job_id in self.store.placing(older_than):
            job = self.store.get(job_id)
            if not job or job["state"] != JobState.PLACED.value:
                self.r.zrem(keys.PLACING, job_id)
                continue
            self._publish(job_id, job["attempt"], job["node"], job["incarnation"])
            self.r.zadd(keys.PLACING, {job_id: now})
            report.republished.append(job_id)


def _pending_job(job: dict) -> PendingJob:
    spec = job["spec"]
    return PendingJob(
        id=job["id"],
        request=Request.from_resources(spec["resources"], spec.get("node_selector") or {}),
        priority=job["priority"],
        seq=job["seq"],
        submitted_at=job["submitted_at"] or 0.0,
        policy=spec.get("policy"),
        est_duration=float(spec.get("timeout") or 0) or None,
    )


def _request_from_alloc(alloc: dict) -> Request:
    return Request(
        cpus=alloc.get("cpus_m", 0) / 1000, memory=alloc.get("memory", 0), gpus=alloc.get("gpus", 0)
    )
