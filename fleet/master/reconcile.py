"""The master's reconciliation: what a lost node held, and what was reserved but never claimed.

A node whose lease lapsed (or that came back as a new incarnation) has every attempt it held
ended as NODE_LOST, which sends the job back to pending as a new attempt; a reserved job nobody
claimed (the master died between reserve and publish, or the message was lost) is published
again, a duplicate being harmless thanks to claim fencing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from fleet.states import EndReason, JobState
from fleet.store import keys, quarantine, records
from fleet.store.jobstore import Outcome
from fleet.store.protocol import Repairs, Store

log = logging.getLogger("fleet.master")

#: Sends an attempt's task to its node: (job id, attempt, node, incarnation).
Publish = Callable[[str, int, str, str], None]


@dataclass
class RoundReport:
    placed: list[tuple[str, str]] = field(default_factory=list)  # (job, node)
    waiting: dict[str, str] = field(default_factory=dict)
    requeued: list[tuple[str, str]] = field(default_factory=list)  # (job, dead node)
    republished: list[str] = field(default_factory=list)


def requeue_lost(store: Store, repair: Repairs, states: list[dict[str, Any]], now: float,
                 report: RoundReport) -> None:
    """End every attempt held by a dead node, or by an older incarnation of a live one."""
    lost = [(s["node"], job, a) for s in states
            if s["report"] is not None or s["unreadable"] is None  # unreadable: not dead
            for job, a in s["alloc"].items()
            if s["report"] is None or a["incarnation"] != s["report"]["incarnation"]]
    backed = repair.backed(lost, states)
    for s in states:
        node, live = s["node"], s["report"]
        if live is None and s["unreadable"] is not None:
            continue  # its lease holds; what it reports cannot be read (yet)
        for job, alloc in s["alloc"].items():
            if live is not None and alloc.get("incarnation") == live["incarnation"]:
                continue
            if (node, job) not in backed:  # an entry its job's record does not back
                repair.entry(node, job)
                continue
            try:
                applied, state = store.finish(
                    job, int(alloc["attempt"]), node,
                    Outcome(EndReason.NODE_LOST, error=f"node {node} lost"), now,
                )
            except redis.exceptions.ResponseError as exc:  # its job record is not a hash
                quarantine.note("job", keys.job(job), exc)
                applied, state = False, "unreadable"
            if not applied:  # a stale entry the job has moved past: drop it
                store.drop_alloc(node, job)
            report.requeued.append((job, node))
            log.warning("node %s lost: job %s -> %s", node, job, state)
        if live is None and not s["bad_alloc"]:
            store.forget(node)


def republish_unclaimed(store: Store, publish: Publish, now: float, older_than: float,
                        report: RoundReport) -> None:
    """Publish again every job reserved before `older_than` and not claimed since."""
    try:
        placing = store.placing(older_than)
    except redis.exceptions.ResponseError:  # not a zset: the guard moves it aside
        return
    for job_id in placing:
        try:
            job = store.get(job_id)
        except records.BadRecord:
            job = None
        if not job or job["state"] != JobState.PLACED.value:
            store.unmark_placing(job_id)
            continue
        publish(job_id, job["attempt"], job["node"], job["incarnation"])
        store.mark_placing(job_id, now)
        report.republished.append(job_id)
