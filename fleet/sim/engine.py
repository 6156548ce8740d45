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

The trace format is in `fleet.sim.trace`, what a run measures in `fleet.sim.metrics`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleet.placement import (
    RESOURCES,
    PendingJob,
    PolicyState,
    RunningJob,
    get_policy,
    never_fits,
    schedule_round,
)
from fleet.placement.nodes import ALLOCATED, CPUS, EPS, GPUS, MEMORY
from fleet.sim.metrics import SimResult, measure
from fleet.sim.trace import Trace, parse_trace

KILL_FRACTION = 0.1  # an over-committed job dies this far into its run
MAX_ATTEMPTS = 20
#: How old the measured usage placement sees is: the agent's heartbeat interval (Settings).
REPORT_DELAY = 1.0
_FINISH, _KILL, _OOM, _SUBMIT = 0, 1, 2, 3  # at one instant: free capacity, then take jobs in


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
        return measure(self)

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
        self.reserved[run.node, ALLOCATED] -= self.needs[k][ALLOCATED]
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
        measured: np.ndarray = np.clip(self.reported, 0.0, self.cap)
        return measured

    def _round(self, now: float) -> set[int]:
        reserved, nodes = self.reserved, self.nodes
        view = nodes.with_load(reserved.copy(), self._measured(now))
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
        reserved[i, ALLOCATED] += need[ALLOCATED]
        over = bool((reserved[i, ALLOCATED] > cap[i, ALLOCATED] + EPS[ALLOCATED]).any())
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
