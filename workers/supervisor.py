"""The job supervisor: runs one attempt in its own process group and reports how it ended.

It claims the attempt (fenced: a stale or duplicate delivery is dropped here), starts the job
process pinned to its cores, relays the job's events to Redis and to the Celery task state (so
Flower shows progress), keeps its log, runs the watchdogs on every tick, and records exactly one
outcome. A crash, an OOM or a cancel takes only that job's process group, never the node.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from fleet import keys
from fleet.entrypoints import check_entrypoint
from fleet.errors import SpecError
from fleet.jobstore import JobStore, Outcome
from fleet.settings import Settings
from fleet.states import EndReason
from workers import runners
from workers.context import Resources
from workers.cores import Pinning
from workers.jobproc import EVENT_FD_ENV
from workers.probe import oom_kill_count, tree_memory
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

    def running_jobs(self) -> list[Running]:
        with self._lock:
            return list(self.running.values())

    # -- one attempt -------------------------------------------------------------------------
    def run(self, payload: dict[str, Any], on_progress: Callable[[dict], None] | None = None) -> dict:
        """Run the attempt a task names; returns a small JSON summary for the Celery result."""
        job_id, attempt = str(payload["job_id"]), int(payload["attempt"])
        if payload.get("node") != self.node or payload.get("incarnation") != self.incarnation:
            return {"discarded": "addressed to another node or incarnation"}
        claimed, why = self.store.claim(job_id, attempt, self.node, self.incarnation)
        if not claimed:
            log.info("dropping %s attempt %s: %s", job_id, attempt, why)
            return {"discarded": why}
        job = self.store.get(job_id)
        assert job is not None
        spec = job["spec"]
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
        try:
            outcome = self._run_process(job, entry, on_progress)
        except Exception as exc:  # a bug or an OS failure here must still end the attempt
            log.exception("supervising %s failed", job_id)
            outcome = Outcome(EndReason.WORKER_LOST, error=f"supervisor error: {exc}")
        finally:
            with self._lock:
                self.running.pop(job_id, None)
            self.pinning.give_back(cores, gpu_ids)
        return self._record(job_id, attempt, outcome)

    def _record(self, job_id: str, attempt: int, outcome: Outcome) -> dict:
        """Record the outcome, waiting out a Redis outage: an outcome is never dropped."""
        delay = 0.5
        while True:
            try:
                applied, state = self.store.finish(job_id, attempt, self.node, outcome)
                break
            except redis.exceptions.ConnectionError:
                log.warning("redis unreachable; retrying the outcome of %s", job_id)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return {"job": job_id, "attempt": attempt, "reason": outcome.reason.value,
                "applied": applied, "state": state}

    def _run_process(
        self, job: dict, entry: Running, on_progress: Callable[[dict], None] | None
    ) -> Outcome:
        spec, job_id, attempt = job["spec"], entry.job_id, entry.attempt
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
        read_fd, write_fd = os.pipe()
        # The job gets no broker credential: it talks to its supervisor through its pipe.
        inherited = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env = {**inherited, **runners.job_env(given), EVENT_FD_ENV: str(write_fd),
               "PYTHONUNBUFFERED": "1"}
        oom_before = oom_kill_count()
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.jobproc"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, pass_fds=[write_fd],
            start_new_session=True, cwd=workdir,
        )
        os.close(write_fd)
        entry.pid = proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(order).encode())
        proc.stdin.close()

        events: queue.Queue[dict] = queue.Queue()
        lines: queue.Queue[str] = queue.Queue()
        readers = [
            threading.Thread(target=_read_events, args=(read_fd, events), daemon=True),
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True),
        ]
        for t in readers:
            t.start()

        watches: list[Watch] = [
            MemoryWatch(int(res["memory"])),
            TimeoutWatch(float(spec.get("timeout") or self.settings.max_job_timeout)),
            CancelWatch(lambda: self._cancel_requested(job_id)),
        ]
        if spec.get("stall_timeout"):
            watches.append(StallWatch(float(spec["stall_timeout"])))
        now = time.time()
        vitals = Vitals(now=now, started_at=now, last_report_at=now, memory=0, peak_memory=0)
        relay = _Relay(self, job_id, attempt, workdir / "output.log", on_progress)
        verdict: Verdict | None = None
        superseded = False
        while proc.poll() is None:
            try:
                proc.wait(timeout=TICK_S)  # returns as soon as the job exits
            except subprocess.TimeoutExpired:
                pass
            vitals.now = time.time()
            vitals.memory = tree_memory(proc.pid)
            vitals.peak_memory = max(vitals.peak_memory, vitals.memory)
            if relay.pump(events, lines, vitals):
                entry.step = relay.step
            if relay.superseded:
                superseded = True
                break
            verdict = first_verdict(watches, vitals)
            if verdict is not None:
                break
        if proc.poll() is None:
            _kill_group(proc)
        _sweep_group(proc.pid)
        for t in readers:
            t.join(timeout=5)
        relay.pump(events, lines, vitals)
        relay.close()
        extra = {"peak_memory": vitals.peak_memory, "node": self.node, "pid": proc.pid}
        if superseded:
            return Outcome(EndReason.NODE_LOST, error="attempt superseded", extra=extra)
        if verdict is not None:
            return Outcome(verdict.reason, verdict.error, final=verdict.final, extra=extra)
        if proc.returncode == 0 and relay.result is not None:
            return Outcome(EndReason.SUCCEEDED, result=relay.result, extra=extra)
        after = oom_kill_count()
        if proc.returncode == -signal.SIGKILL and None not in (oom_before, after) and after > oom_before:  # type: ignore[operator]
            return Outcome(EndReason.OOM, "OOM: killed by the kernel's OOM killer", extra=extra)
        error = relay.error or f"exited with code {proc.returncode}"
        return Outcome(EndReason.ERROR, error, extra=extra)

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.cancel_requested(job_id)
        except redis.exceptions.ConnectionError:
            return False


class _Relay:
    """Moves a job's events and output lines to Redis (fenced), the log file and Celery."""

    def __init__(
        self, sup: Supervisor, job_id: str, attempt: int, log_path: Path,
        on_progress: Callable[[dict], None] | None,
    ) -> None:
        self.sup, self.job_id, self.attempt = sup, job_id, attempt
        self.log_file = log_path.open("a", buffering=1)
        self.on_progress = on_progress
        self.result: dict | None = None
        self.error: str | None = None
        self.step: int | None = None
        self.superseded = False
        self._last_celery = 0.0
        self._latest: dict | None = None

    def pump(self, events: queue.Queue[dict], lines: queue.Queue[str], vitals: Vitals) -> bool:
        """Relay what arrived; True when progress moved."""
        moved = False
        batch: list[str] = []
        while not lines.empty():
            line = lines.get_nowait()
            batch.append(line)
            self.log_file.write(line + "\n")
        while not events.empty():
            event = events.get_nowait()
            kind = event.get("type")
            if kind == "progress":
                self.step = int(event.get("step", 0))
                vitals.last_report_at = vitals.now
                self._latest = {**event, "attempt": self.attempt}
                self._write(lambda e=self._latest: self.sup.store.progress(self.job_id, self.attempt, e))
                moved = True
            elif kind == "resumed":
                self._write(lambda e=event: self.sup.store.progress(
                    self.job_id, self.attempt, e, kind="resumed"))
            elif kind == "result":
                self.result = event.get("result") or {}
            elif kind == "error":
                self.error = str(event.get("error"))
            elif kind == "log":
                batch.append(str(event.get("message", "")))
        if batch:
            self._write_lines(batch)
        if self._latest and self.on_progress and vitals.now - self._last_celery >= 1.0:
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
        self.log_file.close()


def _read_events(fd: int, out: queue.Queue[dict]) -> None:
    with os.fdopen(fd, "r") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.put(event)


def _read_lines(stream: IO[bytes], out: queue.Queue[str]) -> None:
    for raw in stream:
        out.put(raw.decode(errors="replace").rstrip("\n"))


def _sweep_group(pgid: int) -> None:
    """Children the job left behind (data loader workers, shells) go with it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the job's whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
