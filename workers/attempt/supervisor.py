"""The job supervisor: runs one attempt in its own process group and reports how it ended.

It claims the attempt (fenced: a stale or duplicate delivery is dropped here), has the node's
fork server start the job process pinned to its cores, calls its hooks on every tick (the relay
of events, log and progress in `workers.attempt.relay`; the watchdogs in `workers.attempt.watch`)
and records exactly one outcome, decided from what it saw by `workers.attempt.outcome`. A crash,
an OOM or a cancel takes only that job's process group, never the node. Its thread blocks on the
job's pipes and exit, never on a timer: output is read as it comes, the outcome recorded as soon
as the process is gone.

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
from pathlib import Path
from typing import Any, NamedTuple

import redis

from fleet.artifacts.store import OUTPUT_NAME
from fleet.entrypoints import check_entrypoint
from fleet.errors import SpecError
from fleet.observe.logs import LOG_NAME, attempt_dir
from fleet.private import private_dir
from fleet.resources import Resources
from fleet.settings import SECRET_ENV as BROKER_SECRETS
from fleet.settings import STORE_SECRETS, Settings
from fleet.states import EndReason
from fleet.store import published
from fleet.store.jobstore import JobStore, Outcome
from workers import runners
from workers.attempt import bundles
from workers.attempt.commits import CheckpointCommits
from workers.attempt.environment import Environments, NotPrepared
from workers.attempt.outcome import Decision, Ending, decide
from workers.attempt.outputs import AttemptFiles
from workers.attempt.relay import REDIS_DOWN, CeleryProgress, LogCapture, Relay
from workers.attempt.restore import CheckpointStorage
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
from workers.bundle_cache import BundleRejected
from workers.checkpoint import make_private_dir
from workers.context import Allotment
from workers.node import disk
from workers.node.cgroup import OomKillCounter
from workers.node.cores import Pinning
from workers.node.usage import TreeMemory
from workers.process.forkclient import ForkServer, JobProcess, LeaseLapsed
from workers.process.forkserver import kill_group
from workers.process.pipes import JobPipes

log = logging.getLogger("fleet.supervisor")

TICK_S = 0.2
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL the process group
DRAIN_S = 5.0  # after the job exited, how long its pipes may stay open (a stray descendant)
# A job gets neither a broker credential nor the path of the file that holds one (nor the
# package index's URL, which may hold a token, nor the store's keys: the supervisor moves its
# checkpoints, logs and outputs).
SECRET_ENV = BROKER_SECRETS | {"FLEET_REDIS_URL_FILE", "FLEET_PIP_INDEX_URL"} | STORE_SECRETS
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
        self.envs = Environments(settings, env)  # jobs' requirements, built before they start
        self.oom_kills = OomKillCounter()  # the node cgroup's, found at the first job
        self.disk = disk.DiskHealth(settings.artifacts_dir / "jobs")  # the agent reports it
        self.checkpoints = CheckpointStorage(self.store)  # the stores it opened, by URL

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
    def run(
        self, payload: dict[str, Any], on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
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
            settings = published.for_node(self.r, self.settings)  # read for each attempt
            code = bundles.code_root(spec, self.r, settings)  # None: installed code
            if code is None:
                check_entrypoint(spec["entrypoint"], settings.allowlist)
            commits = self.checkpoints.commits(job_id, attempt, self.node, self.incarnation, spec,
                                               self.settings.artifacts_dir)
        except (SpecError, BundleRejected) as exc:
            outcome = Outcome(EndReason.REJECTED, error=str(exc), final=True)
            return self._record(job_id, attempt, outcome)
        except REDIS_DOWN as exc:
            return self._record(job_id, attempt, Outcome(
                EndReason.WORKER_LOST, error=f"redis unreachable before the job started: {exc}"))
        except OSError as exc:  # the bundle cache's disk: full or read-only
            return self._record(job_id, attempt, self._failed(job_id, exc))
        asked = Resources.parse(spec["resources"])
        cores, gpu_ids = self.pinning.take(asked.get("cpus"), int(asked.get("gpus")))
        entry = Running(job_id, attempt, cores, gpu_ids)
        with self._lock:
            self.running[job_id] = entry
        unsent: list[dict[str, Any]] = []
        try:
            outcome = self._run_process(job_id, spec, entry, on_progress, unsent, commits, code,
                                        settings)
        except NotPrepared as exc:  # its env could not be had: no process was started
            outcome = exc.outcome
        except Exception as exc:  # a bug or an OS failure here must still end the attempt
            outcome = self._failed(job_id, exc)
        finally:
            with self._lock:
                self.running.pop(job_id, None)
            self.pinning.give_back(cores, gpu_ids)
            self.envs.release(job_id)
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
        self, job_id: str, attempt: int, outcome: Outcome,
        progress: list[dict[str, Any]] | None = None, commits: CheckpointCommits | None = None,
    ) -> dict[str, Any]:
        """Record the outcome (and the progress reports and checkpoint not sent yet), waiting
        out a Redis outage: an outcome is never dropped. Retried soon after Redis is back (at
        most 2 s apart): until it is recorded, a node lost meanwhile makes the job run again."""
        delay = 0.1
        while True:
            try:
                if commits is not None:  # before the attempt ends: after, it may commit nothing
                    outcome = commits.finish(outcome, self.settings.checkpoint_upload_wait)
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
        self, job_id: str, spec: dict[str, Any], entry: Running,
        on_progress: Callable[[dict[str, Any]], None] | None, unsent: list[dict[str, Any]],
        commits: CheckpointCommits, code: Path | None = None, settings: Settings | None = None,
    ) -> Outcome:
        """Run the attempt's process to its end; `unsent` gets the progress reports that came
        after the last tick, for `finish` to record in the same step."""
        attempt = entry.attempt
        settings = settings or self.settings
        cpu_at_start = time.thread_time()  # this thread's CPU: the supervisor's cost per job
        res = spec["resources"]
        workdir = attempt_dir(self.settings.artifacts_dir, job_id, attempt)
        log_path = _prepare(workdir, self.settings.artifacts_dir)  # a full disk fails here
        site = self.envs.prepare(self.store, job_id, attempt, spec, log_path, entry.cores,
                                 lambda: self._cancel_requested(job_id), code)  # before its timeout
        self.checkpoints.prepare(commits, settings, log_path, lambda: self._cancel_requested(job_id))
        order = {
            "job_id": job_id, "attempt": attempt, "entrypoint": spec["entrypoint"],
            "params": spec.get("params") or {}, "framework": spec.get("framework", "none"),
            "allowlist": list(settings.allowlist), "workdir": str(workdir),
            "checkpoint_dir": str(commits.folder),
            "output_dir": str(workdir / OUTPUT_NAME),
            "restore": commits.restore, "code_root": None if code is None else str(code),
            "env_site": None if site is None else str(site),
            "resources": {**res, "cpuset": list(entry.cores), "gpu_ids": list(entry.gpu_ids)},
        }
        given = Allotment.from_order(order["resources"])
        make_private_dir(commits.root)
        oom_before = self.oom_kills.read()
        proc = self._spawn(runners.job_env(given), workdir, json.dumps(order).encode())
        entry.pid = proc.pid
        pipes = JobPipes(proc)
        memory = TreeMemory(proc.pid)
        watches: list[Watch] = [
            MemoryWatch(given.memory),
            TimeoutWatch(float(spec.get("timeout") or settings.max_job_timeout)),
            CancelWatch(lambda: self._cancel_requested(job_id)),
        ]
        if spec.get("stall_timeout"):
            watches.append(StallWatch(float(spec["stall_timeout"])))
        now = time.time()
        vitals = Vitals(now=now, started_at=now, last_report_at=now, memory=0, peak_memory=0)
        files = AttemptFiles(settings, job_id, attempt, log_path)  # its log, outputs to the store
        capture = LogCapture(self.r, job_id, attempt, log_path, self.settings.log_max_bytes,
                             files.open_log)
        relay = Relay(self.store, job_id, attempt, capture, CeleryProgress(on_progress, now),
                      commits)
        try:
            stop = _tick_until_exit(pipes, relay, memory, watches, vitals, entry)
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
            capture.close()
            pipes.close()
            # an attempt that is not the job's now waits for no upload: its node moves on
            stored = files.finish(self.node, *((0.0, 0.0) if proc.fenced or relay.superseded
                                               else ()))
        vitals.peak_memory = max(vitals.peak_memory, proc.maxrss)
        extra = {"peak_memory": vitals.peak_memory, "node": self.node, "pid": proc.pid,
                 "supervisor_cpu": round(time.thread_time() - cpu_at_start, 3), **stored}
        decision = decide(Ending(
            returncode=proc.returncode, result=relay.result, job_error=relay.error,
            superseded=stop.superseded, fenced=proc.fenced, verdict=stop.verdict,
            log_disk_error=capture.disk_error, stopped_for_disk=stop.for_disk,
            server_lost=proc.server_lost, oom_kills_before=oom_before,
            oom_kills_now=self.oom_kills.read, disk_fault=self._disk_fault,
        ))
        return self._outcome(job_id, attempt, decision, extra)

    def _outcome(
        self, job_id: str, attempt: int, decision: Decision, extra: dict[str, Any],
    ) -> Outcome:
        """Act on the decision: the node's disk told, the record's extra fields completed."""
        for fault in decision.disk_faults:
            self.disk.fail(fault)
        if decision.row == "fenced":
            log.warning("%s attempt %s stopped: this node's lease ran out under it", job_id,
                        attempt)
        if decision.log_error is not None:
            extra["log_error"] = decision.log_error  # the job was over: its own outcome stands
        return Outcome(decision.reason, decision.error, result=decision.result,
                       final=decision.final, extra=extra)

    def _spawn(self, env: dict[str, str], workdir: Path, order: bytes) -> JobProcess:
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

    def _disk_fault(self) -> str | None:
        """What is wrong with the node's artifact disk now (full or read-only), else None."""
        try:
            disk.check_room(self.disk.directory)
        except OSError as exc:
            return disk.describe(exc)
        return None

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.cancel_requested(job_id)
        except REDIS_DOWN:
            return False


class _Stop(NamedTuple):
    """Why the supervisor stopped a job that still ran (all false: it exited on its own)."""

    superseded: bool = False
    for_disk: bool = False
    verdict: Verdict | None = None


def _tick_until_exit(
    pipes: JobPipes, relay: Relay, memory: TreeMemory, watches: list[Watch], vitals: Vitals,
    entry: Running,
) -> _Stop:
    """Relay and watch the job on every tick until it exits or must be stopped."""
    next_tick = time.monotonic() + TICK_S
    # Blocks until the job exits, it writes something, or the next tick is due.
    while pipes.wait(max(0.0, next_tick - time.monotonic())) is None:
        if time.monotonic() < next_tick:
            relay.capture.spill(pipes)  # output flowing fast is written as it comes
            continue
        next_tick = time.monotonic() + TICK_S
        vitals.now = time.time()
        vitals.memory = memory.sample()
        vitals.peak_memory = max(vitals.peak_memory, vitals.memory)
        if relay.pump(pipes, vitals):
            entry.step = relay.step
        if relay.superseded:
            return _Stop(superseded=True)
        if relay.capture.disk_error is not None:  # its output cannot be kept: stop it
            return _Stop(for_disk=True)
        verdict = first_verdict(watches, vitals)
        if verdict is not None:
            return _Stop(verdict=verdict)
    return _Stop()


def _prepare(workdir: Path, artifacts: Path) -> Path:
    """Make the attempt's folder and its `output` (0700, parents too) and its empty output.log
    (0600), and check the disk has room: a full or read-only disk fails the attempt here, before
    the job starts, with the path named. Returns the log's path."""
    private_dir(workdir / OUTPUT_NAME, tighten=[artifacts])
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
