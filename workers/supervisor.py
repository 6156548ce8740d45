"""The job supervisor: runs one attempt in its own process group and reports how it ended.

It claims the attempt (fenced: a stale or duplicate delivery is dropped here), has the node's
fork server start the job process pinned to its cores, relays the job's events to Redis and to
the Celery task state (so Flower shows progress), keeps its log, runs the watchdogs on every
tick, and records exactly one outcome. A crash, an OOM or a cancel takes only that job's process
group, never the node. Its thread blocks on the job's pipes and exit, never on a timer: output
is read as it comes, the outcome recorded as soon as the process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import redis

from fleet import keys
from fleet.entrypoints import check_entrypoint
from fleet.errors import SpecError
from fleet.jobstore import JobStore, Outcome
from fleet.settings import Settings
from fleet.states import EndReason
from workers import load, runners
from workers.context import Resources
from workers.cores import Pinning
from workers.forkserver import ForkServer
from workers.pipes import JobPipes
from workers.probe import TreeMemory, find_cgroup
from workers.watch import (
    CancelWatch,
    MemoryWatch,
    StallWatch,
    TimeoutWatch,
    Verdict,
    Vitals,
    Watch,
    first_verdict,
)

log = logging.getLogger("fleet.supervisor")

TICK_S = 0.2
LOG_LINES_CAP = 5000  # output lines kept in Redis per attempt (the file keeps all)
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL the process group
DRAIN_S = 5.0  # after the job exited, how long its pipes may stay open (a stray descendant)
PROGRESS_TO_CELERY_S = 1.0  # Flower's view of progress: at most this often, and not before
SECRET_ENV = frozenset({"FLEET_REDIS_URL", "FLOWER_BASIC_AUTH", "REDIS_PASSWORD"})


@dataclass
class Running:
    """An attempt this node runs now (what the node agent reports)."""

    job_id: str
    attempt: int
    cores: tuple[int, ...]
    gpu_ids: tuple[int, ...]
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    step: int | None = None


class Supervisor:
    def __init__(
        self, settings: Settings, client: redis.Redis, node: str, incarnation: str,
        pinning: Pinning,
    ) -> None:
        self.settings = settings
        self.r = client
        self.store = JobStore(client)
        self.node = node
        self.incarnation = incarnation
        self.pinning = pinning
        self.running: dict[str, Running] = {}
        self._lock = threading.Lock()
        # Job processes see no broker credential; they are forked with the rest of this env.
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        self.forks = ForkServer({**env, "PYTHONUNBUFFERED": "1"})
        self._oom_counter: list[Callable[[], int | None]] | None = None  # readers, own first

    def start(self) -> None:
        """Start the fork server now, from the worker's main thread (else on the first job)."""
        self.forks.start()

    def close(self) -> None:
        self.forks.stop()

    def running_jobs(self) -> list[Running]:
        with self._lock:
            return list(self.running.values())

    # -- one attempt -------------------------------------------------------------------------
    def run(self, payload: dict[str, Any], on_progress: Callable[[dict], None] | None = None) -> dict:
        """Run the attempt a task names; returns a small JSON summary for the Celery result."""
        job_id, attempt = str(payload["job_id"]), int(payload["attempt"])
        if payload.get("node") != self.node or payload.get("incarnation") != self.incarnation:
            return {"discarded": "addressed to another node or incarnation"}
        claimed, why, spec = self.store.claim_spec(job_id, attempt, self.node, self.incarnation)
        if not claimed:
            log.info("dropping %s attempt %s: %s", job_id, attempt, why)
            return {"discarded": why}
        if spec is None:  # claimed, but its record is unreadable: end it, with why
            return self._record(job_id, attempt, Outcome(EndReason.REJECTED, error=why, final=True))
        try:
            check_entrypoint(spec["entrypoint"], self.settings.allowlist)
        except SpecError as exc:
            outcome = Outcome(EndReason.REJECTED, error=str(exc), final=True)
            return self._record(job_id, attempt, outcome)
        res = spec["resources"]
        cores, gpu_ids = self.pinning.take(float(res["cpus"]), int(res.get("gpus", 0)))
        entry = Running(job_id, attempt, cores, gpu_ids)
        with self._lock:
            self.running[job_id] = entry
        unsent: list[dict] = []
        try:
            outcome = self._run_process(job_id, spec, entry, on_progress, unsent)
        except Exception as exc:  # a bug or an OS failure here must still end the attempt
            log.exception("supervising %s failed", job_id)
            outcome = Outcome(EndReason.WORKER_LOST, error=f"supervisor error: {exc}")
        finally:
            with self._lock:
                self.running.pop(job_id, None)
            self.pinning.give_back(cores, gpu_ids)
        return self._record(job_id, attempt, outcome, unsent)

    def _record(
        self, job_id: str, attempt: int, outcome: Outcome, progress: list[dict] | None = None
    ) -> dict:
        """Record the outcome (and the progress reports not sent yet), waiting out a Redis
        outage: an outcome is never dropped."""
        delay = 0.5
        while True:
            try:
                applied, state = self.store.finish(job_id, attempt, self.node, outcome,
                                                   progress=progress or ())
                break
            except redis.exceptions.ConnectionError:
                log.warning("redis unreachable; retrying the outcome of %s", job_id)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return {"job": job_id, "attempt": attempt, "reason": outcome.reason.value,
                "applied": applied, "state": state}

    def _run_process(
        self, job_id: str, spec: dict, entry: Running, on_progress: Callable[[dict], None] | None,
        unsent: list[dict],
    ) -> Outcome:
        """Run the attempt's process to its end; `unsent` gets the progress reports that came
        after the last tick, for `finish` to record in the same step."""
        attempt = entry.attempt
        res = spec["resources"]
        job_dir = self.settings.artifacts_dir / "jobs" / job_id
        workdir = job_dir / f"attempt-{attempt}"
        workdir.mkdir(parents=True, exist_ok=True)
        order = {
            "job_id": job_id, "attempt": attempt, "entrypoint": spec["entrypoint"],
            "params": spec.get("params") or {}, "framework": spec.get("framework", "none"),
            "allowlist": list(self.settings.allowlist), "workdir": str(workdir),
            "checkpoint_dir": str(job_dir / "checkpoints"),
            "resources": {**res, "cpuset": list(entry.cores), "gpu_ids": list(entry.gpu_ids)},
        }
        given = Resources(cpus=float(res["cpus"]), memory=int(res["memory"]),
                          gpus=int(res.get("gpus", 0)), cpuset=entry.cores, gpu_ids=entry.gpu_ids)
        oom_before = self._oom_kills()
        proc = self.forks.spawn(runners.job_env(given), workdir, json.dumps(order).encode())
        entry.pid = proc.pid
        pipes = JobPipes(proc)
        memory = TreeMemory(proc.pid)
        watches: list[Watch] = [
            MemoryWatch(int(res["memory"])),
            TimeoutWatch(float(spec.get("timeout") or self.settings.max_job_timeout)),
            CancelWatch(lambda: self._cancel_requested(job_id)),
        ]
        if spec.get("stall_timeout"):
            watches.append(StallWatch(float(spec["stall_timeout"])))
        now = time.time()
        vitals = Vitals(now=now, started_at=now, last_report_at=now, memory=0, peak_memory=0)
        relay = _Relay(self, job_id, attempt, workdir / "output.log", on_progress, now)
        verdict: Verdict | None = None
        superseded = False
        try:
            next_tick = time.monotonic() + TICK_S
            # Blocks until the job exits, it writes something, or the next tick is due.
            while pipes.wait(max(0.0, next_tick - time.monotonic())) is None:
                if time.monotonic() < next_tick:
                    continue
                next_tick = time.monotonic() + TICK_S
                vitals.now = time.time()
                vitals.memory = memory.sample()
                vitals.peak_memory = max(vitals.peak_memory, vitals.memory)
                if relay.pump(pipes, vitals):
                    entry.step = relay.step
                if relay.superseded:
                    superseded = True
                    break
                verdict = first_verdict(watches, vitals)
                if verdict is not None:
                    break
            if proc.returncode is None:
                _kill_group(proc.pid, pipes)
            _sweep_group(proc.pid)
            pipes.drain(DRAIN_S)
            vitals.now = time.time()
            relay.pump(pipes, vitals, final=True)
            unsent.extend(relay.unsent)
        finally:
            if proc.returncode is None:  # leaving on an error: the job must not outlive us
                _sweep_group(proc.pid)
            relay.close()
            pipes.close()
        vitals.peak_memory = max(vitals.peak_memory, proc.maxrss)
        extra = {"peak_memory": vitals.peak_memory, "node": self.node, "pid": proc.pid}
        if superseded:
            return Outcome(EndReason.NODE_LOST, error="attempt superseded", extra=extra)
        if verdict is not None:
            return Outcome(verdict.reason, verdict.error, final=verdict.final, extra=extra)
        if proc.returncode == 0 and relay.result is not None:
            return Outcome(EndReason.SUCCEEDED, result=relay.result, extra=extra)
        after = self._oom_kills()
        if proc.returncode == -signal.SIGKILL and None not in (oom_before, after) and after > oom_before:  # type: ignore[operator]
            return Outcome(EndReason.OOM, "OOM: killed by the kernel's OOM killer", extra=extra)
        if proc.server_lost:
            return Outcome(EndReason.WORKER_LOST, "the node's fork server died under the job",
                           extra=extra)
        error = relay.error or f"exited with code {proc.returncode}"
        return Outcome(EndReason.ERROR, error, extra=extra)

    def _oom_kills(self) -> int | None:
        """The node cgroup's oom_kill counter. Where to read it is found once: the worker
        confines itself before its first job and its cgroup does not change after."""
        if self._oom_counter is None:
            view = find_cgroup()
            name = "memory.events" if view is not None and view.version == 2 else "memory.oom_control"
            self._oom_counter = [] if view is None else [
                partial(view.read, d, name, load.parse_oom_kill) for d in view.chain("memory")]
        for read in self._oom_counter:
            count = read()
            if count is not None:
                return count
        return None

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.cancel_requested(job_id)
        except redis.exceptions.ConnectionError:
            return False


class _Relay:
    """Moves a job's events and output lines to Redis (fenced), the log file and Celery."""

    def __init__(
        self, sup: Supervisor, job_id: str, attempt: int, log_path: Path,
        on_progress: Callable[[dict], None] | None, started: float,
    ) -> None:
        self.sup, self.job_id, self.attempt = sup, job_id, attempt
        self.log_path = log_path
        self.log_file: IO[str] | None = None  # opened with the first line: none, no file
        self.on_progress = on_progress
        self.result: dict | None = None
        self.error: str | None = None
        self.step: int | None = None
        self.superseded = False
        self.unsent: list[dict] = []  # the final pump's progress, left for finish.lua
        self._last_celery = started  # a job over within a second shows no progress in Flower
        self._latest: dict | None = None

    def pump(self, pipes: JobPipes, vitals: Vitals, final: bool = False) -> bool:
        """Relay what arrived; True when progress moved. The progress of the `final` pump
        (the job has ended) is kept in `unsent`, to be recorded with the outcome."""
        moved = False
        reports: list[dict] = []
        batch, events = pipes.take()
        for event in events:
            kind = event.get("type")
            if kind == "progress":
                self.step = int(event.get("step", 0))
                vitals.last_report_at = vitals.now
                self._latest = {**event, "attempt": self.attempt}
                reports.append(self._latest)
                moved = True
            elif kind == "resumed":
                self._write(partial(self.sup.store.progress, self.job_id, self.attempt, event,
                                    kind="resumed"))
            elif kind == "result":
                self.result = event.get("result") or {}
            elif kind == "error":
                self.error = str(event.get("error"))
            elif kind == "log":
                batch.append(str(event.get("message", "")))
        if reports and final:
            self.unsent.extend(reports)
        elif reports:
            self._write(partial(self.sup.store.progress_many, self.job_id, self.attempt, reports))
        if batch:
            if self.log_file is None:
                self.log_file = self.log_path.open("a", buffering=1)
            self.log_file.write("\n".join(batch) + "\n")
            self._write_lines(batch)
        if (self._latest and self.on_progress and not final
                and vitals.now - self._last_celery >= PROGRESS_TO_CELERY_S):
            self._last_celery = vitals.now
            try:
                self.on_progress(self._latest)
            except Exception:  # Flower's view is best effort; the record is in fleet's keys
                log.debug("celery progress update failed", exc_info=True)
        return moved

    def _write(self, op: Callable[[], bool]) -> None:
        try:
            if not op():
                self.superseded = True
        except redis.exceptions.ConnectionError:
            pass  # progress is advisory while Redis is away; the outcome is retried

    def _write_lines(self, batch: list[str]) -> None:
        key = keys.job_logs(self.job_id, self.attempt)
        try:
            pipe = self.sup.r.pipeline(transaction=False)
            pipe.rpush(key, *batch)
            pipe.ltrim(key, -LOG_LINES_CAP, -1)
            pipe.execute()
        except redis.exceptions.ConnectionError:
            pass  # the log file keeps them

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()


def _sweep_group(pgid: int) -> None:
    """Children the job left behind (data loader workers, shells) go with it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int, pipes: JobPipes) -> None:
    """SIGTERM the job's whole process group, then SIGKILL what is left; its output is read
    meanwhile, so that a job writing as it stops cannot block on a full pipe."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while pipes.wait(max(0.0, deadline - time.monotonic())) is None:
            if time.monotonic() >= deadline:
                break
        if pipes.proc.returncode is not None:
            return
    deadline = time.monotonic() + 5.0  # gone from the group: wait for its exit status
    while pipes.wait(max(0.0, deadline - time.monotonic())) is None and time.monotonic() < deadline:
        pass
