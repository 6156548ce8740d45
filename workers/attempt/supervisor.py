"""The job supervisor: runs one attempt in its own process group and reports how it ended.

It claims the attempt (fenced: a stale or duplicate delivery is dropped here), has the node's
fork server start the job process pinned to its cores, relays the job's events to Redis and to
the Celery task state (so Flower shows progress), keeps its log, runs the watchdogs on every
tick, and records exactly one outcome. A crash, an OOM or a cancel takes only that job's process
group, never the node. Its thread blocks on the job's pipes and exit, never on a timer: output
is read as it comes, the outcome recorded as soon as the process is gone.

Fencing (DESIGN.md, invariant 8): the node's lease is passed on to the fork server
(`renew_lease`), which kills the jobs of a node that could not renew it; the checkpoints an
attempt announces are committed with its fencing token (`workers.attempt.commits`), and the next
attempt is told the committed ones only.
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
from typing import Any

import redis

from fleet.store import keys
from fleet.entrypoints import check_entrypoint
from fleet.errors import SpecError
from fleet.observe.logs import LOG_LINES_CAP, LOG_NAME, attempt_dir
from fleet.store.jobstore import JobStore, Outcome
from fleet.private import private_dir
from fleet.settings import SECRET_ENV as BROKER_SECRETS
from fleet.settings import Settings
from fleet.states import EndReason
from workers import runners
from workers.node import disk
from workers.checkpoint import make_private_dir
from workers.attempt.commits import CheckpointCommits
from workers.context import Resources
from workers.node.cores import Pinning
from workers.process.forkclient import ForkServer, LeaseLapsed
from workers.process.forkserver import kill_group
from workers.attempt.outputlog import OutputLog
from workers.process.pipes import JobPipes
from workers.node.cgroup import OomKillCounter
from workers.node.usage import TreeMemory
from workers.attempt.watch import (
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
SPILL_BYTES = 4 << 20  # output read past this is written out at once, not at the next tick
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL the process group
DRAIN_S = 5.0  # after the job exited, how long its pipes may stay open (a stray descendant)
PROGRESS_TO_CELERY_S = 1.0  # Flower's view of progress: at most this often, and not before
# A job gets neither a broker credential nor the path of the file that holds one.
SECRET_ENV = BROKER_SECRETS | {"FLEET_REDIS_URL_FILE"}
# Redis away: refused, reset, or silent past the client's socket timeout
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
LEASE_WAIT_S = 0.2  # between tries to start a job while the node's lease is not renewed


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
        self.oom_kills = OomKillCounter()  # the node cgroup's, found at the first job
        self.disk = disk.DiskHealth(settings.artifacts_dir / "jobs")  # the agent reports it

    def start(self) -> None:
        """Start the fork server now, from the worker's main thread (else on the first job)."""
        self.forks.start()

    def close(self) -> None:
        self.forks.stop()

    def renew_lease(self, until: float, lapsed: bool) -> None:
        """The node's lease holds until monotonic time `until` (the agent, after a heartbeat
        Redis applied); `lapsed`: it had expired first, so what runs here is fenced."""
        if lapsed and self.running_jobs():
            log.warning("node %s's lease had lapsed: its jobs are stopped", self.node)
        self.forks.renew(until, lapsed)

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
        try:
            committed = self.store.committed_checkpoints(job_id)
        except REDIS_DOWN as exc:
            return self._record(job_id, attempt, Outcome(
                EndReason.WORKER_LOST, error=f"redis unreachable before the job started: {exc}"))
        commits = CheckpointCommits(
            self.store, job_id, attempt, self.node, self.incarnation,
            self.settings.artifacts_dir / "jobs" / job_id / "checkpoints", committed)
        res = spec["resources"]
        cores, gpu_ids = self.pinning.take(float(res["cpus"]), int(res.get("gpus", 0)))
        entry = Running(job_id, attempt, cores, gpu_ids)
        with self._lock:
            self.running[job_id] = entry
        unsent: list[dict] = []
        try:
            outcome = self._run_process(job_id, spec, entry, on_progress, unsent, commits)
        except Exception as exc:  # a bug or an OS failure here must still end the attempt
            outcome = self._failed(job_id, exc)
        finally:
            with self._lock:
                self.running.pop(job_id, None)
            self.pinning.give_back(cores, gpu_ids)
        return self._record(job_id, attempt, outcome, unsent, commits)

    def _failed(self, job_id: str, exc: Exception) -> Outcome:
        """The outcome of an attempt the supervisor could not carry: the node's own disk
        (counted, and the node stops taking work), else a lost worker (not counted)."""
        if isinstance(exc, OSError) and disk.is_disk_error(exc):
            error = disk.describe(exc)
            log.warning("attempt of %s failed on this node's disk: %s", job_id, error)
            self.disk.fail(error)
            return Outcome(EndReason.DISK, error=error)
        log.exception("supervising %s failed", job_id)
        return Outcome(EndReason.WORKER_LOST, error=f"supervisor error: {exc}")

    def _record(
        self, job_id: str, attempt: int, outcome: Outcome, progress: list[dict] | None = None,
        commits: CheckpointCommits | None = None,
    ) -> dict:
        """Record the outcome (and the progress reports and checkpoint not sent yet), waiting
        out a Redis outage: an outcome is never dropped. Retried soon after Redis is back (at
        most 2 s apart): until it is recorded, a node lost meanwhile makes the job run again."""
        delay = 0.1
        while True:
            try:
                if commits is not None:
                    commits.flush()  # before the attempt ends: after, it may commit nothing
                applied, state = self.store.finish(job_id, attempt, self.node, outcome,
                                                   progress=progress or ())
                break
            except REDIS_DOWN:
                log.warning("redis unreachable; retrying the outcome of %s", job_id)
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)
        return {"job": job_id, "attempt": attempt, "reason": outcome.reason.value,
                "applied": applied, "state": state}

    def _run_process(
        self, job_id: str, spec: dict, entry: Running, on_progress: Callable[[dict], None] | None,
        unsent: list[dict], commits: CheckpointCommits,
    ) -> Outcome:
        """Run the attempt's process to its end; `unsent` gets the progress reports that came
        after the last tick, for `finish` to record in the same step."""
        attempt = entry.attempt
        cpu_at_start = time.thread_time()  # this thread's CPU: the supervisor's cost per job
        res = spec["resources"]
        workdir = attempt_dir(self.settings.artifacts_dir, job_id, attempt)
        log_path = _prepare(workdir, self.settings.artifacts_dir)  # a full disk fails here
        order = {
            "job_id": job_id, "attempt": attempt, "entrypoint": spec["entrypoint"],
            "params": spec.get("params") or {}, "framework": spec.get("framework", "none"),
            "allowlist": list(self.settings.allowlist), "workdir": str(workdir),
            "checkpoint_dir": str(commits.folder),
            "restore": commits.restore,
            "resources": {**res, "cpuset": list(entry.cores), "gpu_ids": list(entry.gpu_ids)},
        }
        given = Resources(cpus=float(res["cpus"]), memory=int(res["memory"]),
                          gpus=int(res.get("gpus", 0)), cpuset=entry.cores, gpu_ids=entry.gpu_ids)
        make_private_dir(commits.root)
        oom_before = self.oom_kills.read()
        proc = self._spawn(runners.job_env(given), workdir, json.dumps(order).encode())
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
        relay = _Relay(self, job_id, attempt, log_path, on_progress, now, commits)
        verdict: Verdict | None = None
        superseded = disk_stop = False
        try:
            next_tick = time.monotonic() + TICK_S
            # Blocks until the job exits, it writes something, or the next tick is due.
            while pipes.wait(max(0.0, next_tick - time.monotonic())) is None:
                if time.monotonic() < next_tick:
                    relay.spill(pipes)  # output flowing fast is written as it comes
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
                if relay.disk_error is not None:  # its output cannot be kept: stop it
                    disk_stop = True
                    break
                verdict = first_verdict(watches, vitals)
                if verdict is not None:
                    break
            if proc.returncode is None:
                _stop_group(proc.pid, pipes)
            kill_group(proc.pid)
            pipes.drain(DRAIN_S)
            vitals.now = time.time()
            relay.pump(pipes, vitals, final=True)
            unsent.extend(relay.unsent)
        finally:
            if proc.returncode is None:  # leaving on an error: the job must not outlive us
                kill_group(proc.pid)
            relay.close()
            pipes.close()
        vitals.peak_memory = max(vitals.peak_memory, proc.maxrss)
        extra = {"peak_memory": vitals.peak_memory, "node": self.node, "pid": proc.pid,
                 "supervisor_cpu": round(time.thread_time() - cpu_at_start, 3)}
        if superseded:
            return Outcome(EndReason.NODE_LOST, error="attempt superseded", extra=extra)
        if proc.fenced:
            log.warning("%s attempt %s stopped: this node's lease ran out under it", job_id,
                        attempt)
            return Outcome(EndReason.NODE_LOST, extra=extra,
                           error="fenced: the node could not renew its lease in time")
        if relay.disk_error is not None:
            self.disk.fail(relay.disk_error)
            if disk_stop:
                return Outcome(EndReason.DISK, relay.disk_error, extra=extra)
            extra["log_error"] = relay.disk_error  # the job was over: its own outcome stands
        if verdict is not None:
            return Outcome(verdict.reason, verdict.error, final=verdict.final, extra=extra)
        if proc.returncode == 0 and relay.result is not None:
            return Outcome(EndReason.SUCCEEDED, result=relay.result, extra=extra)
        after = self.oom_kills.read()
        if proc.returncode == -signal.SIGKILL and None not in (oom_before, after) and after > oom_before:  # type: ignore[operator]
            return Outcome(EndReason.OOM, "OOM: killed by the kernel's OOM killer", extra=extra)
        if proc.server_lost:
            return Outcome(EndReason.WORKER_LOST, "the node's fork server died under the job",
                           extra=extra)
        error = relay.error or f"exited with code {proc.returncode}"
        if (failed := self._disk_failed(error)) is not None:
            return Outcome(EndReason.DISK, f"{failed} (the job: {error})", extra=extra)
        return Outcome(EndReason.ERROR, error, extra=extra)

    def _spawn(self, env: dict[str, str], workdir: Path, order: bytes) -> Any:
        """Have the fork server start the job; while the node's lease is not renewed it starts
        none, so wait up to one heartbeat TTL for a renewal (LeaseLapsed past that)."""
        deadline = time.monotonic() + self.settings.heartbeat_ttl
        while True:
            try:
                return self.forks.spawn(env, workdir, order)
            except LeaseLapsed:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LEASE_WAIT_S)

    def _disk_failed(self, error: str) -> str | None:
        """When a job died of a disk errno (`OSError: [Errno 28] ...`, e.g. writing its
        checkpoint) and the node's artifact disk is indeed full or read-only: what is wrong
        with the disk (the node is marked unhealthy). None for the job's own error."""
        if disk.errno_in(error) is None:
            return None
        try:
            disk.check_room(self.disk.directory)
        except OSError as exc:
            self.disk.fail(disk.describe(exc))
            return disk.describe(exc)
        return None

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.cancel_requested(job_id)
        except REDIS_DOWN:
            return False


class _Relay:
    """Moves a job's events and output to Redis (fenced), the log file and Celery.

    Output goes to the file as the bytes the job wrote (capped, see workers.attempt.outputlog) and to
    Redis as lines, only the last LOG_LINES_CAP of each batch (the list keeps no more): a job
    printing a GiB costs a write per MiB and one split of its tail, not a call per line. A
    disk error on the file is kept in `disk_error`, named, and the file is no more written.
    """

    def __init__(
        self, sup: Supervisor, job_id: str, attempt: int, log_path: Path,
        on_progress: Callable[[dict], None] | None, started: float,
        commits: CheckpointCommits | None = None,
    ) -> None:
        self.sup, self.job_id, self.attempt = sup, job_id, attempt
        self.commits = commits
        self.log_path = log_path
        self.log_file: OutputLog | None = None  # opened with the first output
        self.disk_error: str | None = None
        self.on_progress = on_progress
        self.result: dict | None = None
        self.error: str | None = None
        self.step: int | None = None
        self.superseded = False
        self.unsent: list[dict] = []  # the final pump's progress, left for finish.lua
        self._last_celery = started  # a job over within a second shows no progress in Flower
        self._latest: dict | None = None
        self._tail = bytearray()  # output written to the file, its last lines not yet to Redis

    def pump(self, pipes: JobPipes, vitals: Vitals, final: bool = False) -> bool:
        """Relay what arrived; True when progress moved. The progress of the `final` pump
        (the job has ended) is kept in `unsent`, to be recorded with the outcome."""
        moved = False
        reports: list[dict] = []
        logged: list[str] = []
        output, events = pipes.take()
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
                logged.append(str(event.get("message", "")))
            elif kind == "checkpoint" and self.commits is not None:
                self.commits.announce(event.get("step"))
        if self.commits is not None and self.commits.pending is not None:
            self._write(self.commits.flush)  # before the progress that came after it
        if reports and final:
            self.unsent.extend(reports)
        elif reports:
            self._write(partial(self.sup.store.progress_many, self.job_id, self.attempt, reports))
        if logged:
            output += ("\n".join(logged) + "\n").encode(errors="replace")
        self._output(output)
        if self._tail:
            self._write_lines(_last_lines(self._tail, LOG_LINES_CAP))
            self._tail = bytearray()
        if (self._latest and self.on_progress and not final
                and vitals.now - self._last_celery >= PROGRESS_TO_CELERY_S):
            self._last_celery = vitals.now
            try:
                self.on_progress(self._latest)
            except Exception:  # Flower's view is best effort; the record is in fleet's keys
                log.debug("celery progress update failed", exc_info=True)
        return moved

    def spill(self, pipes: JobPipes) -> None:
        """Between ticks: write out the output read so far once it is big, so a fast job's
        output is never held long in memory. Events, and the lines for Redis, wait for the
        tick (only the tail of what was spilled is kept for it)."""
        if pipes.backlog >= SPILL_BYTES:
            self._output(pipes.take_output())
            self._tail = self._tail[_tail_start(self._tail, LOG_LINES_CAP):]

    def _output(self, data: bytes | bytearray) -> None:
        """To the file, and to the tail that goes to Redis at the tick."""
        if not data:
            return
        self._tail += data
        if self.disk_error is None:
            try:
                if self.log_file is None:
                    self.log_file = OutputLog(self.log_path, self.sup.settings.log_max_bytes)
                self.log_file.write(data)
            except OSError as exc:
                if not disk.is_disk_error(exc):
                    raise
                self.disk_error = disk.describe(exc, self.log_path)
                self.close()

    def _write(self, op: Callable[[], bool]) -> None:
        try:
            if not op():
                self.superseded = True
        except REDIS_DOWN:
            pass  # progress is advisory while Redis is away; the outcome is retried

    def _write_lines(self, batch: list[str]) -> None:
        key = keys.job_logs(self.job_id, self.attempt)
        try:
            pipe = self.sup.r.pipeline(transaction=False)
            pipe.rpush(key, *batch)
            pipe.ltrim(key, -LOG_LINES_CAP, -1)
            pipe.execute()
        except REDIS_DOWN:
            pass  # the log file keeps them
        except redis.exceptions.ResponseError as exc:  # e.g. a logs key of the wrong type
            log.warning("log lines of %s not kept in redis: %s", self.job_id, exc)

    def close(self) -> None:
        log_file, self.log_file = self.log_file, None
        if log_file is not None:
            log_file.close()


def _tail_start(data: bytes | bytearray, n: int) -> int:
    """Where the last `n` lines of `data` (complete lines) begin."""
    parts = data.rsplit(b"\n", n + 1)
    return len(parts[0]) + 1 if len(parts) == n + 2 else 0


def _last_lines(data: bytes | bytearray, n: int) -> list[str]:
    """The last `n` lines of `data` (complete lines, each ending in a newline), decoded: a
    split from the right, so its cost is the tail's, whatever came before."""
    parts = data.rsplit(b"\n", n + 1)[:-1]  # after the last newline: nothing
    return [p.decode(errors="replace") for p in parts[-n:]]


def _prepare(workdir: Path, artifacts: Path) -> Path:
    """Make the attempt's folder (0700, its parents too) and its empty output.log (0600), and
    check the disk has room: a full or read-only disk fails the attempt here, before the job
    starts, with the path named. Returns the log's path."""
    private_dir(workdir, tighten=[artifacts])
    path = workdir / LOG_NAME
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    disk.check_room(workdir)
    return path


def _stop_group(pgid: int, pipes: JobPipes) -> None:
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
