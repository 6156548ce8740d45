"""What a replay measures: job completion times, waits, the makespan against its lower bounds,
utilization and the cost of each placement decision.

Pure: computed from the finished replay's bookkeeping (`Replayed`, which the engine's event loop
fills) and the trace, so a metric can be checked by hand on a small trace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from fleet.placement.nodes import ALLOCATED, RESOURCES
from fleet.sim.trace import Trace


@dataclass
class SimResult:
    policy: str
    jobs: int  # completed
    rejected: int  # bigger than every node: refused at submit, as the master does
    failed: int  # killed MAX_ATTEMPTS times
    unplaced: int  # still waiting when nothing else could happen (no node ever fits them)
    mean_duration: float  # the floor under mean_jct: what the jobs take with no wait at all
    mean_jct: float
    p95_jct: float
    mean_wait: float
    p95_wait: float
    mean_slowdown: float
    mean_stretch: float  # run time / duration: what sharing CPUs cost the jobs (1: nothing)
    makespan: float
    makespan_lower_bound: float
    makespan_ratio: float
    work_bound: float  # max(total work / capacity, longest job): ignores when jobs arrive
    utilization: dict[str, float]
    idle_while_waiting: float  # job-seconds: fit a node's free resources, not held, yet waited
    held_while_waiting: float  # job-seconds: fit only on nodes held for a starving job
    over_commits: int
    kills: int
    decisions: int
    decision_time_ms_mean: float
    decision_time_ms_p99: float
    per_job: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["per_job"]
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


class Replayed(Protocol):
    """What the engine's event loop leaves behind once every event ran."""

    trace: Trace
    policy: str
    started: list[float]  # per job, when its last attempt started (nan: never)
    finished: list[float]  # per job, when it completed (nan: never)
    attempts: list[int]
    times: list[float]  # seconds per placement decision
    pending: Any  # the jobs still waiting (only counted)
    rejected: int
    failed: int
    over_commits: int
    kills: int
    idle: float
    held: float


def lower_bound(trace: Trace) -> tuple[float, float]:
    """(release-aware bound, work bound) on the makespan, measured from the first submit.

    Work bound: max(total work / capacity per resource, longest job), as if every job were there
    at the start. Jobs arrive over time, though, and none can run before it arrives: for every
    submit time t, the makespan is at least (t − t0) + (work submitted at or after t) / capacity,
    and at least (submit − t0) + duration for each job. The largest of these (the first t gives
    the work bound) is what a trace at load 0.8 can be held to: its work bound is ~0.8 of the
    span of its arrivals, which no schedule can reach.
    """
    jobs = trace.jobs
    if not jobs:
        return 0.0, 0.0
    t0 = jobs[0].submit_at
    submit = np.array([j.submit_at for j in jobs]) - t0
    duration = np.array([j.duration for j in jobs])
    work = np.array([j.request.vector()[ALLOCATED] for j in jobs]) * duration[:, None]
    capacity = trace.nodes.capacity[:, ALLOCATED].sum(axis=0)
    has = capacity > 0
    suffix = np.cumsum(work[::-1], axis=0)[::-1][:, has] / capacity[has]
    release = float((submit[:, None] + suffix).max()) if has.any() else 0.0
    longest = float((submit + duration).max())
    work_bound = max(float(suffix[0].max()) if has.any() else 0.0, float(duration.max()))
    return max(release, longest, work_bound), work_bound


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def measure(sim: Replayed) -> SimResult:
    """The result of a finished replay: completion times, bounds, utilization, decision cost."""
    trace, started, finished, times = sim.trace, sim.started, sim.finished, sim.times
    jobs = trace.jobs
    done = [k for k, t in enumerate(finished) if not math.isnan(t)]
    submit = np.array([jobs[k].submit_at for k in done])
    duration = np.array([jobs[k].duration for k in done])
    jct = np.array([finished[k] for k in done]) - submit
    wait = np.array([started[k] for k in done]) - submit
    stretch = (jct - wait) / duration if len(done) else np.zeros(0)
    t0 = jobs[0].submit_at if jobs else 0.0
    makespan = float(max(finished[k] for k in done) - t0) if done else 0.0
    bound, work_bound = lower_bound(trace)
    capacity = trace.nodes.capacity[:, ALLOCATED].sum(axis=0)
    work = sum((jobs[k].request.vector()[ALLOCATED] * jobs[k].duration for k in done),
               np.zeros(len(ALLOCATED)))
    utilization = {
        RESOURCES[c]: round(float(work[r] / (capacity[r] * makespan)), 4)
        for r, c in enumerate(ALLOCATED)
        if capacity[r] > 0 and makespan > 0
    }
    ms = np.array(times) * 1e3
    return SimResult(
        policy=sim.policy,
        jobs=len(done),
        rejected=sim.rejected,
        failed=sim.failed,
        unplaced=len(sim.pending),
        mean_duration=float(duration.mean()) if len(duration) else 0.0,
        mean_jct=float(jct.mean()) if len(jct) else 0.0,
        p95_jct=_pct(jct, 95),
        mean_wait=float(wait.mean()) if len(wait) else 0.0,
        p95_wait=_pct(wait, 95),
        mean_slowdown=float((jct / duration).mean()) if len(jct) else 0.0,
        mean_stretch=float(stretch.mean()) if len(stretch) else 0.0,
        makespan=makespan,
        makespan_lower_bound=bound,
        makespan_ratio=makespan / bound if bound else 0.0,
        work_bound=work_bound,
        utilization=utilization,
        idle_while_waiting=sim.idle,
        held_while_waiting=sim.held,
        over_commits=sim.over_commits,
        kills=sim.kills,
        decisions=len(times),
        decision_time_ms_mean=float(ms.mean()) if len(ms) else 0.0,
        decision_time_ms_p99=_pct(ms, 99),
        per_job={
            jobs[k].id: {
                "submit": jobs[k].submit_at,
                "start": started[k],
                "end": finished[k],
                "attempts": sim.attempts[k],
            }
            for k in done
        },
    )
