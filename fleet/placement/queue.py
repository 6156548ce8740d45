"""The pending queue's scheduling round: which waiting jobs go where, now.

Both the live master (on each wake-up: capacity freed, a node joined, a job arrived) and the
simulator (on each event) call `schedule_round` with the nodes as they are and every pending job.
It is pure: it returns placements and reasons, and the caller reserves, publishes and records.

The rule, in order:

1. Jobs are taken by priority (higher first), then by submit order (`seq`). Priority is strict:
   a job never waits for one of lower priority.
2. A job that fits some node now is placed there by its policy (its own, else the fleet's), and
   the placement is applied to the view before the next job is looked at.
3. A job that fits nowhere waits, and the jobs behind it still run where they fit: a large job
   does not block small ones (no head-of-line blocking). This is what makes the queue
   work-conserving.
4. Anti-starvation. Left at that, a large job may never run while small ones keep every node a
   little busy. So once a blocked job has waited `starvation_after` seconds, it gets a *hold* on
   one node: the node where it could start soonest, judged by capacity and by when the jobs there
   end (`est_end` of running jobs; `now + est_duration` of jobs placed this round; unknown ends
   count as never). From then on, jobs behind it in the order may use the held node only if
   (a) they end before the held job could start there (`now + est_duration <= start`, known
   duration or timeout only), or (b) they fit in what stays free there even once the held job is
   in (EASY backfilling's two conditions). So the held node's expected start never moves later,
   and the held job starts once the jobs running there end. Each starving job holds a different
   node; holds are recomputed every round, so a hold moves if another node frees sooner.

Rounds keep no state: whatever is held or waits follows from the inputs and `now`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from fleet.placement.nodes import (
    ALLOCATED_COLUMNS,
    EPS,
    NodeView,
    Request,
    feasible,
    fits,
    never_fits,
    unfit_reason,
)
from fleet.placement.policies import Decision, PolicyState, choose, get_policy

_EPS3 = EPS[:ALLOCATED_COLUMNS]


@dataclass(frozen=True)
class PendingJob:
    id: str
    request: Request
    priority: int
    seq: int  # submit order: FIFO within one priority
    submitted_at: float
    policy: str | None = None  # overrides the fleet's policy for this job
    est_duration: float | None = None  # an upper bound (the job's timeout), or known in a sim


@dataclass(frozen=True)
class RunningJob:
    id: str
    node: str
    request: Request
    est_end: float | None  # None: may run forever, as far as the queue knows


@dataclass
class Hold:
    """A node kept for a starving job: only jobs that end before `start` or fit in `spare`."""

    job: str
    node: str
    index: int
    start: float  # when the held job can start there at the latest (inf: not known)
    spare: np.ndarray  # (3,) CPUs, memory, GPUs left free there at `start` once the job is in
    waited: float  # how long the held job has waited, at this round


@dataclass
class RoundResult:
    placements: list[tuple[PendingJob, Decision]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why it waits
    positions: dict[str, int] = field(default_factory=dict)  # job id -> 1-based place in line
    holds: dict[str, Hold] = field(default_factory=dict)  # starving job id -> its held node
    decision_times: list[float] = field(default_factory=list)  # seconds spent in each choose()


def queue_order(pending: Sequence[PendingJob]) -> list[PendingJob]:
    """Priority descending, then submit order."""
    return sorted(pending, key=lambda j: (-j.priority, j.seq))


def schedule_round(
    nodes: NodeView,
    pending: Sequence[PendingJob],
    running: Sequence[RunningJob],
    *,
    policy: str,
    state: PolicyState,
    now: float,
    starvation_after: float = 300.0,
    explain: bool = True,
) -> RoundResult:
    """One pass over the pending jobs; see the module docstring for the rule.

    `explain=False` skips composing the reasons of waiting jobs (the simulator's hot path): they
    then read "waits for capacity".
    """
    result = RoundResult()
    order = queue_order(pending)
    if not order:
        return result
    view = nodes
    releases = _releases(view, running)
    holds: list[Hold] = []
    reasons: dict[str, str] = {}
    max_free = view.free().max(axis=0) if len(view) else None
    for job in order:
        name = job.policy or policy
        req = job.request
        need = req.vector()
        checks_fit = get_policy(name).checks_fit
        if max_free is None:
            reasons[job.id] = "no live nodes"
            continue
        # Cheap test first: most waiting jobs exceed the largest free amount of something.
        fits_now = not checks_fit or (
            bool((max_free + EPS >= need).all()) and bool(feasible(view, req).any())
        )
        decision = None
        if fits_now:
            blocked = _blocked_by(holds, job, need, now) if checks_fit else None
            start = perf_counter()
            decision = choose(name, view, req, state, blocked=blocked)
            result.decision_times.append(perf_counter() - start)
        if decision is not None and decision.index is not None:
            i = decision.index
            view = view.with_reserved(i, req)
            max_free = view.free().max(axis=0)
            end = math.inf if job.est_duration is None else now + job.est_duration
            releases.setdefault(i, []).append((end, need[:ALLOCATED_COLUMNS]))
            for held in holds:
                if held.index == i and not end <= held.start:
                    held.spare = np.maximum(held.spare - need[:ALLOCATED_COLUMNS], 0.0)
            result.placements.append((job, decision))
            continue
        waited = now - job.submitted_at
        hold: Hold | None = None
        if checks_fit and waited >= starvation_after and never_fits(view, req) is None:
            hold = _hold(view, job, releases, holds, now)
            if hold is not None:
                holds.append(hold)
                result.holds[job.id] = hold
        if explain:
            reasons[job.id] = _reason(view, req, decision, hold, now)
        else:
            reasons[job.id] = "waits for capacity"
    for position, job_id in enumerate(reasons, start=1):
        result.positions[job_id] = position
    result.waiting = reasons
    return result


def _releases(view: NodeView, running: Sequence[RunningJob]) -> dict[int, list]:
    """Node index -> [(expected end, CPUs/memory/GPUs it gives back)]."""
    out: dict[int, list] = {}
    for job in running:
        i = view.index(job.node)
        if i is not None:
            end = math.inf if job.est_end is None else job.est_end
            out.setdefault(i, []).append((end, job.request.vector()[:ALLOCATED_COLUMNS]))
    return out


def _blocked_by(holds: list[Hold], job: PendingJob, need: np.ndarray, now: float) -> dict[int, str]:
    """The held nodes this job may not use: it would delay the job the node is held for."""
    blocked: dict[int, str] = {}
    end = math.inf if job.est_duration is None else now + job.est_duration
    for hold in holds:
        if math.isfinite(hold.start) and end <= hold.start:
            continue  # ends before the held job could start: backfill
        if (need[:ALLOCATED_COLUMNS] <= hold.spare + _EPS3).all():
            continue  # fits beside the held job
        blocked[hold.index] = f"held for {hold.job}, waiting {hold.waited:.0f}s"
    return blocked


def _earliest(free: np.ndarray, need: np.ndarray, ends: list, now: float) -> tuple[float, np.ndarray]:
    """When `need` fits on a node with `free` now as its jobs end; what is free then."""
    avail = free[:ALLOCATED_COLUMNS].copy()
    want = need[:ALLOCATED_COLUMNS]
    if (avail + _EPS3 >= want).all():
        return now, avail
    for end, gives in sorted(ends, key=lambda e: e[0]):
        if not math.isfinite(end):
            break
        avail = avail + gives
        if (avail + _EPS3 >= want).all():
            return max(end, now), avail
    return math.inf, avail


def _hold(
    view: NodeView, job: PendingJob, releases: Mapping[int, list], holds: list[Hold], now: float
) -> Hold | None:
    """The node where `job` could start soonest, not held already; None if there is none."""
    need = job.request.vector()
    able = fits(view.capacity, need)
    selector = view.selector_mask(job.request.node_selector)
    if selector is not None:
        able &= selector
    taken = {h.index for h in holds}
    free = view.free()
    want = np.where(need[:ALLOCATED_COLUMNS] > 0, need[:ALLOCATED_COLUMNS], np.inf)
    best: tuple | None = None
    for index in np.flatnonzero(able):
        i = int(index)
        if i in taken:
            continue
        start, avail = _earliest(free[i], need, list(releases.get(i, [])), now)
        # Among nodes that never free in time, the one closest to fitting.
        closeness = float(np.min(avail / want))
        key = (start, -closeness, i)
        if best is None or key < best[0]:
            best = (key, avail)
    if best is None:
        return None
    (start, _, i), avail = best
    spare = np.maximum(avail - need[:ALLOCATED_COLUMNS], 0.0)
    return Hold(job.id, view.names[i], i, start, spare, now - job.submitted_at)


def _reason(view: NodeView, req: Request, decision: Decision | None, hold: Hold | None, now: float) -> str:
    never = never_fits(view, req)
    if never is not None:
        reason = never[1]
    elif decision is not None and decision.reason:
        reason = decision.reason
    else:
        reason = unfit_reason(view, req)
    if hold is not None:
        when = (
            f"expected to start in {hold.start - now:.0f}s"
            if math.isfinite(hold.start)
            else "start unknown: jobs there have no time limit"
        )
        reason += f"; {hold.node} is held for it ({when})"
    return reason
