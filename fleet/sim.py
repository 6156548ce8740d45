"""A simulator: replay a trace through the placement code in simulated time, and measure it.

Pure: no I/O, no clock but `perf_counter` around each decision. Event-driven: a job's submit
and its end are events; after all the events of one instant, one `schedule_round` (the very
function the live master calls) places what it can.

What a job asks for (`resources`) and what it uses (`usage`) differ, as they do in every
published cluster trace: a job may use fewer CPUs than it reserved, or more (a thread pool
larger than its request), and less memory. `usage` defaults to the request, so a trace without
it replays as if every job used exactly what it asked for. Placement sees only what the live
master sees: the reservations (exact, at once) and the node agents' measured usage, as of the
last heartbeat (`report_delay` seconds old; CPU capped at the node's capacity, as the agent
reports it).

- CPUs: processor sharing per node. A job's `duration` is its run time when it gets all the
  CPU it uses. While the CPUs its node's running jobs use add up to more than the node has,
  every one of them runs at capacity / sum (each runnable thread gets an equal share, so each
  job's share is in proportion to its use); speeds are recomputed whenever a job starts or
  ends there.
- Memory: only the `seed` baseline can over-commit reservations (every other policy places only
  what fits); the simulator lets it, counts it, and charges what a real node would: once the
  job that pushed the memory its node's jobs use past the capacity reaches its working set (a
  tenth of its duration in), the kernel's OOM killer kills the largest job there (by use), then
  the next largest, until what is left fits. A killed job loses its work and goes back to the
  queue with its place in line.
- GPUs: a job that gets no GPU of its own fails a tenth of the way in (CUDA runs out of memory
  on the device it shares), and goes back to the queue.

A job killed `MAX_ATTEMPTS` times counts as failed. A job's completion time is its wait plus
its duration stretched by the CPU sharing it met; the mean duration (`mean_duration`) is the
floor no policy can go below.

Trace format (JSON): `{"nodes": [{"name", "cpus", "memory", "gpus", "gpu_memory", "labels"}],
"jobs": [{"id", "submit_at", "duration", "resources": {"cpus", "memory", "gpus", "gpu_memory"},
"usage": {"cpus", "memory"}, "priority", "node_selector", "policy"}]}`; memory as bytes or
`2Gi`; `usage` and each of its keys optional (default: the request).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fleet.errors import SpecError
from fleet.placement import (
    RESOURCES,
    NodeView,
    PendingJob,
    PolicyState,
    Request,
    RunningJob,
    get_policy,
    never_fits,
    schedule_round,
)
from fleet.placement.nodes import ALLOCATED, CPUS, EPS, GPUS, MEMORY, quantity

KILL_FRACTION = 0.1  # an over-committed job dies this far into its run
MAX_ATTEMPTS = 20
#: How old the measured usage placement sees is: the agent's heartbeat interval (Settings).
REPORT_DELAY = 1.0
USAGE_KEYS = ("cpus", "memory")
_FINISH, _KILL, _OOM, _SUBMIT = 0, 1, 2, 3  # at one instant: free capacity, then take jobs in


@dataclass(frozen=True)
class TraceJob:
    id: str
    submit_at: float
    duration: float
    request: Request
    priority: int = 0
    policy: str | None = None
    #: (CPUs, memory bytes) the job really uses; None: exactly its request.
    usage: tuple[float, float] | None = None

    def used(self) -> tuple[float, float]:
        """(CPUs, memory) the job uses while it runs."""
        if self.usage is None:
            return self.request.cpus, self.request.memory
        return self.usage


@dataclass(frozen=True)
class Trace:
    nodes: NodeView  # empty: nothing reserved, nothing used
    jobs: tuple[TraceJob, ...]


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(where, f"expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise SpecError(where, f"expected a {'positive' if positive else 'non-negative'} number")
    return float(value)


def _resources(entry: Mapping, where: str) -> list[float]:
    out = []
    for name in RESOURCES:
        try:
            out.append(quantity(name, entry.get(name)))
        except ValueError as exc:
            raise SpecError(f"{where}.{name}", str(exc)) from None
    return out


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(where, "expected a mapping of label to value")
    return {str(k): str(v) for k, v in value.items()}


def _usage(value: Any, request: list[float], where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError(where, "expected an object with cpus and/or memory")
    unknown = sorted(set(value) - set(USAGE_KEYS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}", f"unknown usage key; use {', '.join(USAGE_KEYS)}")
    used = []
    for name, asked in zip(USAGE_KEYS, (request[CPUS], request[MEMORY]), strict=True):
        try:
            used.append(asked if value.get(name) is None else quantity(name, value[name]))
        except ValueError as exc:
            raise SpecError(f"{where}.{name}", str(exc)) from None
    return used[0], used[1]


def parse_trace(data: Any) -> Trace:
    """Validate a trace; SpecError names the culprit, e.g. `jobs[3].resources.memory`."""
    if not isinstance(data, Mapping):
        raise SpecError("trace", "expected a JSON object with nodes and jobs")
    raw_nodes, raw_jobs = data.get("nodes"), data.get("jobs")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise SpecError("nodes", "expected a non-empty list of nodes")
    if not isinstance(raw_jobs, list):
        raise SpecError("jobs", "expected a list of jobs")
    names, capacity, labels = [], [], []
    for k, node in enumerate(raw_nodes):
        where = f"nodes[{k}]"
        if not isinstance(node, Mapping):
            raise SpecError(where, "expected an object")
        name = str(node.get("name", f"node-{k}"))
        if name in names:
            raise SpecError(f"{where}.name", f"duplicate node name {name!r}")
        names.append(name)
        capacity.append(_resources(node, where))
        labels.append(_labels(node.get("labels"), f"{where}.labels"))
    cap = np.array(capacity, dtype=np.float64)
    nodes = NodeView(tuple(names), cap, np.zeros_like(cap), np.zeros_like(cap), tuple(labels))
    jobs, seen = [], set()
    for k, job in enumerate(raw_jobs):
        where = f"jobs[{k}]"
        if not isinstance(job, Mapping):
            raise SpecError(where, "expected an object")
        job_id = str(job.get("id", f"job-{k}"))
        if job_id in seen:
            raise SpecError(f"{where}.id", f"duplicate job id {job_id!r}")
        seen.add(job_id)
        resources = job.get("resources")
        if not isinstance(resources, Mapping):
            raise SpecError(f"{where}.resources", "expected an object with cpus, memory, gpus")
        vec = _resources(resources, f"{where}.resources")
        priority = job.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise SpecError(f"{where}.priority", f"expected an integer, got {priority!r}")
        policy = job.get("policy")
        if policy is not None:
            try:
                get_policy(policy)
            except ValueError as exc:
                raise SpecError(f"{where}.policy", str(exc)) from None
        selector = _labels(job.get("node_selector"), f"{where}.node_selector")
        jobs.append(
            TraceJob(
                job_id,
                _number(job.get("submit_at", 0), f"{where}.submit_at"),
                _number(job.get("duration"), f"{where}.duration", positive=True),
                Request(vec[0], vec[1], vec[2], vec[3], node_selector=selector),
                priority,
                policy,
                _usage(job.get("usage"), vec, f"{where}.usage"),
            )
        )
    jobs.sort(key=lambda j: j.submit_at)
    return Trace(nodes, tuple(jobs))


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


@dataclass
class _Run:
    job: int
    node: int
    left: float  # work left, in seconds at full speed
    rate: float
    since: float  # when `left` was last brought up to date
    version: int  # a finish event for another version is stale
    attempt: int  # a kill event for another attempt is stale
    dies_at: float | None = None


def _rate(cpus: float, demand: float) -> float:
    """Speed of the CPU-using jobs on a node with `cpus` whose jobs use `demand` CPUs in all."""
    if demand > cpus + EPS[CPUS] and cpus > 0:
        return cpus / demand
    return 1.0


class _Sim:
    """The event loop's state; `simulate` is its only user."""

    def __init__(
        self, trace: Trace, policy: str, seed: int, starvation_after: float, report_delay: float
    ) -> None:
        self.trace, self.policy, self.starvation_after = trace, policy, starvation_after
        self.nodes, self.jobs = trace.nodes, trace.jobs
        self.cap = self.nodes.capacity
        self.reserved = np.zeros_like(self.cap)
        # What the running jobs really use, per node: CPUs (demand) and memory (working sets).
        self.used = np.zeros((len(self.nodes), 2))
        self.uses = [j.used() for j in self.jobs]
        # Usage as the node agents last reported it: changes reach it `report_delay` late.
        self.report_delay = report_delay
        self.reported = np.zeros_like(self.cap)
        self.changes: deque[tuple[float, int, np.ndarray]] = deque()
        self.state = PolicyState(np.random.default_rng(seed))
        self.needs = [j.request.vector() for j in self.jobs]
        self.heap: list[tuple[float, int, int, int]] = []
        self.pending: dict[int, PendingJob] = {}
        self.runs: dict[int, _Run] = {}
        self.on_node: list[set[int]] = [set() for _ in range(len(self.nodes))]
        n = len(self.jobs)
        self.attempts, self.started, self.finished = [0] * n, [math.nan] * n, [math.nan] * n
        self.rejected = self.failed = self.over_commits = self.kills = 0
        self.idle = self.held = 0.0
        self.times: list[float] = []
        self.tick = 0  # versions of runs

    def run(self) -> SimResult:
        for k, job in enumerate(self.jobs):
            if never_fits(self.nodes, job.request) is not None:
                self.rejected += 1
            else:
                heapq.heappush(self.heap, (job.submit_at, _SUBMIT, k, 0))
        while self.heap:
            now = self.heap[0][0]
            while self.heap and self.heap[0][0] <= now:
                self._event(*heapq.heappop(self.heap))
            held: set[int] = set()
            if self.pending:
                held = self._round(now)
            if self.pending:
                idle, blocked = self._fitting(held)
                if self.heap:
                    self.idle += idle * (self.heap[0][0] - now)
                    self.held += blocked * (self.heap[0][0] - now)
                elif not self.runs:
                    break  # nothing will ever change: what waits can never be placed
        assert not self.runs, "every run ends in a finish or a kill event"
        return _metrics(self)

    def _pend(self, k: int) -> None:
        job = self.jobs[k]
        self.pending[k] = PendingJob(
            job.id, job.request, job.priority, k, job.submit_at, job.policy, job.duration
        )

    def _event(self, now: float, kind: int, k: int, version: int) -> None:
        if kind == _SUBMIT:
            self._pend(k)
        elif kind == _FINISH and k in self.runs and self.runs[k].version == version:
            self._end(k, now)
            self.finished[k] = now
        elif kind == _KILL and k in self.runs and self.runs[k].attempt == version:
            self._kill(k, now)
        elif kind == _OOM:
            self._oom(k, now)

    def _kill(self, k: int, now: float) -> None:
        self._end(k, now)
        self.kills += 1
        if self.attempts[k] >= MAX_ATTEMPTS:
            self.failed += 1
        else:
            self._pend(k)

    def _oom(self, i: int, now: float) -> None:
        """The kernel's OOM killer on node i: the largest job goes, until memory fits."""
        while self.used[i, 1] > self.cap[i, MEMORY] + EPS[MEMORY] and self.on_node[i]:
            victim = max(self.on_node[i], key=lambda k: (self.uses[k][1], k))
            self._kill(victim, now)

    def _use(self, k: int, i: int, sign: float, now: float) -> None:
        """Job k starts (+1) or stops (−1) using its CPUs and memory on node i."""
        cpus, memory = self.uses[k]
        self.used[i] += (sign * cpus, sign * memory)
        delta = np.zeros(len(RESOURCES))
        delta[[CPUS, MEMORY, GPUS]] = sign * cpus, sign * memory, sign * self.needs[k][GPUS]
        self.changes.append((now, i, delta))

    def _end(self, k: int, now: float) -> None:
        run = self.runs.pop(k)
        self.on_node[run.node].discard(k)
        self.reserved[run.node, :ALLOCATED] -= self.needs[k][:ALLOCATED]
        self._use(k, run.node, -1.0, now)
        self._rerate(run.node, now)

    def _rerate(self, i: int, now: float) -> None:
        """Bring the speeds of node i's jobs up to date after the CPUs they use changed."""
        node_rate = _rate(float(self.cap[i, CPUS]), float(self.used[i, 0]))
        for k in self.on_node[i]:
            run = self.runs[k]
            rate = node_rate if self.uses[k][0] > 0 else 1.0
            if rate != run.rate:
                self.tick += 1
                run.left -= (now - run.since) * run.rate
                run.since, run.rate, run.version = now, rate, self.tick
                if run.dies_at is None:
                    heapq.heappush(self.heap, (now + run.left / rate, _FINISH, k, self.tick))

    def _measured(self, now: float) -> np.ndarray:
        """(n, 4) usage as the agents report it at `now`: CPUs and memory used, busy GPUs.

        A change shows `report_delay` after it happened; like the agent, a node reports no more
        than it has (CPU time is capped by its CPUs, memory by the OOM killer).
        """
        while self.changes and self.changes[0][0] + self.report_delay <= now:
            _, i, delta = self.changes.popleft()
            self.reported[i] += delta
        return np.clip(self.reported, 0.0, self.cap)

    def _round(self, now: float) -> set[int]:
        cap, reserved, nodes = self.cap, self.reserved, self.nodes
        view = NodeView(
            nodes.names,
            cap,
            reserved.copy(),
            self._measured(now),
            nodes.labels,
            nodes._static,
        )
        running = [
            RunningJob(self.jobs[k].id, nodes.names[r.node], self.jobs[k].request, _est_end(r))
            for k, r in self.runs.items()
        ]
        result = schedule_round(
            view,
            list(self.pending.values()),
            running,
            policy=self.policy,
            state=self.state,
            now=now,
            starvation_after=self.starvation_after,
            explain=False,
        )
        self.times.extend(result.decision_times)
        for pjob, decision in result.placements:
            assert decision.index is not None
            self._place(pjob.seq, decision.index, now)
        return {hold.index for hold in result.holds.values()}

    def _place(self, k: int, i: int, now: float) -> None:
        cap, reserved, need = self.cap, self.reserved, self.needs[k]
        del self.pending[k]
        self.attempts[k] += 1
        reserved[i, :ALLOCATED] += need[:ALLOCATED]
        over = bool((reserved[i, :ALLOCATED] > cap[i, :ALLOCATED] + EPS[:ALLOCATED]).any())
        self.over_commits += over
        self._use(k, i, 1.0, now)
        self.tick += 1
        rate = _rate(float(cap[i, CPUS]), float(self.used[i, 0])) if self.uses[k][0] > 0 else 1.0
        run = _Run(k, i, self.jobs[k].duration, rate, now, self.tick, self.tick)
        self.runs[k] = run
        self.on_node[i].add(k)
        self.started[k] = now
        if need[GPUS] > 0 and reserved[i, GPUS] > cap[i, GPUS] + EPS[GPUS]:
            # No GPU of its own: CUDA runs out of memory on the device it shares.
            run.dies_at = now + KILL_FRACTION * self.jobs[k].duration
            heapq.heappush(self.heap, (run.dies_at, _KILL, k, run.attempt))
        else:
            heapq.heappush(self.heap, (now + run.left / rate, _FINISH, k, run.version))
        if self.uses[k][1] > 0 and self.used[i, 1] > cap[i, MEMORY] + EPS[MEMORY]:
            # The node runs out of memory once this job reaches its working set.
            heapq.heappush(self.heap, (now + KILL_FRACTION * self.jobs[k].duration, _OOM, i, 0))
        self._rerate(i, now)

    def _fitting(self, held: set[int]) -> tuple[int, int]:
        """(waiting jobs that fit a node not held, those that fit only held ones), by free now."""
        keys = list(self.pending)
        needs = np.array([self.needs[k] for k in keys])
        free = self.cap - self.reserved
        ok = (free[None, :, :] + EPS >= needs[:, None, :]).all(axis=2)
        for j, k in enumerate(keys):
            mask = self.nodes.selector_mask(self.jobs[k].request.node_selector)
            if mask is not None:
                ok[j] &= mask
        anywhere = ok.any(axis=1)
        if held:
            ok[:, sorted(held)] = False
        unheld = ok.any(axis=1)
        return int(unheld.sum()), int((anywhere & ~unheld).sum())


def simulate(
    trace: Mapping[str, Any] | Trace,
    policy: str,
    *,
    seed: int = 0,
    starvation_after: float = 300.0,
    report_delay: float = REPORT_DELAY,
) -> SimResult:
    """Replay `trace` with `policy` (the fleet's; a job's own `policy` wins); see the module doc."""
    get_policy(policy)
    if not report_delay >= 0:
        raise ValueError(f"report_delay must be >= 0, got {report_delay!r}")
    tr = trace if isinstance(trace, Trace) else parse_trace(trace)
    return _Sim(tr, policy, seed, starvation_after, report_delay).run()


def _est_end(run: _Run) -> float:
    if run.dies_at is not None:
        return run.dies_at
    return run.since + run.left / run.rate


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
    work = np.array([j.request.vector()[:ALLOCATED] for j in jobs]) * duration[:, None]
    capacity = trace.nodes.capacity[:, :ALLOCATED].sum(axis=0)
    has = capacity > 0
    suffix = np.cumsum(work[::-1], axis=0)[::-1][:, has] / capacity[has]
    release = float((submit[:, None] + suffix).max()) if has.any() else 0.0
    longest = float((submit + duration).max())
    work_bound = max(float(suffix[0].max()) if has.any() else 0.0, float(duration.max()))
    return max(release, longest, work_bound), work_bound


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def _metrics(sim: _Sim) -> SimResult:
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
    capacity = trace.nodes.capacity[:, :ALLOCATED].sum(axis=0)
    work = sum((jobs[k].request.vector()[:ALLOCATED] * jobs[k].duration for k in done), np.zeros(3))
    utilization = {
        RESOURCES[r]: round(float(work[r] / (capacity[r] * makespan)), 4)
        for r in range(ALLOCATED)
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


def compare(
    trace: Mapping[str, Any] | Trace,
    policies: Sequence[str],
    *,
    seed: int = 0,
    report_delay: float = REPORT_DELAY,
) -> list[dict[str, Any]]:
    """One row (`SimResult.as_dict()`) per policy, on the same trace and seed."""
    tr = trace if isinstance(trace, Trace) else parse_trace(trace)
    return [
        simulate(tr, policy, seed=seed, report_delay=report_delay).as_dict() for policy in policies
    ]
