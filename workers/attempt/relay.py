"""What a running job says and prints, relayed: its events to Redis, its output to its log, its
progress to Celery. Three small hooks the supervisor calls on each tick, none deciding anything.

- `Relay`: the job's events (progress, resumed, result, error, log, checkpoint) to Redis through
  the fenced steps; a refused write means another attempt is current (`superseded`).
- `LogCapture`: the job's output to output.log as the bytes it wrote (capped, see
  `workers.attempt.outputlog`) and to Redis as lines, only the last LOG_LINES_CAP of each batch
  (the list keeps no more): a job printing a GiB costs a write per MiB and one split of its tail,
  not a call per line. A disk error on the file is kept in `disk_error`, named, and the file is
  no more written.
- `CeleryProgress`: the latest progress to the Celery task state, so Flower shows it: best
  effort, at most every PROGRESS_TO_CELERY_S, and not before (a job over within a second shows
  none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis

from fleet.observe.logs import LOG_LINES_CAP
from fleet.store import keys
from fleet.store.jobstore import JobStore
from workers.attempt.commits import CheckpointCommits
from workers.attempt.outputlog import OutputLog
from workers.attempt.watch import Vitals
from workers.node import disk
from workers.process.pipes import JobPipes

log = logging.getLogger("fleet.supervisor")

SPILL_BYTES = 4 << 20  # output read past this is written out at once, not at the next tick
PROGRESS_TO_CELERY_S = 1.0  # Flower's view of progress: at most this often, and not before
# Redis away: refused, reset, or silent past the client's socket timeout
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

Event = dict[str, Any]


class LogCapture:
    """A job's output: all of it to its log file, the tail of each tick's batch to Redis."""

    def __init__(self, client: redis.Redis, job_id: str, attempt: int, path: Path,
                 max_bytes: int, open_log: Callable[[Path, int], OutputLog] = OutputLog) -> None:
        self.r, self.job_id, self.attempt = client, job_id, attempt
        self.path, self.max_bytes = path, max_bytes
        self.open_log = open_log  # the log shipper's, which reads the file back
        self.disk_error: str | None = None
        self._file: OutputLog | None = None  # opened with the first output
        self._tail = bytearray()  # output written to the file, its last lines not yet to Redis

    def write(self, data: bytes | bytearray) -> None:
        """To the file, and to the tail that goes to Redis at the tick."""
        if not data:
            return
        self._tail += data
        if self.disk_error is None:
            try:
                if self._file is None:
                    self._file = self.open_log(self.path, self.max_bytes)
                self._file.write(data)
            except OSError as exc:
                if not disk.is_disk_error(exc):
                    raise
                self.disk_error = disk.describe(exc, self.path)
                self.close()

    def spill(self, pipes: JobPipes) -> None:
        """Between ticks: write out the output read so far once it is big, so a fast job's
        output is never held long in memory. Events, and the lines for Redis, wait for the
        tick (only the tail of what was spilled is kept for it)."""
        if pipes.backlog >= SPILL_BYTES:
            self.write(pipes.take_output())
            self._tail = self._tail[_tail_start(self._tail, LOG_LINES_CAP):]

    def flush(self) -> None:
        """The last lines written since the previous flush, to Redis."""
        if not self._tail:
            return
        batch, self._tail = _last_lines(self._tail, LOG_LINES_CAP), bytearray()
        key = keys.job_logs(self.job_id, self.attempt)
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(key, *batch)
            pipe.ltrim(key, -LOG_LINES_CAP, -1)
            pipe.execute()
        except REDIS_DOWN:
            pass  # the log file keeps them
        except redis.exceptions.ResponseError as exc:  # e.g. a logs key of the wrong type
            log.warning("log lines of %s not kept in redis: %s", self.job_id, exc)

    def close(self) -> None:
        log_file, self._file = self._file, None
        if log_file is not None:
            log_file.close()


class CeleryProgress:
    """The latest progress report to Celery's task state (Flower's view), best effort."""

    def __init__(self, on_progress: Callable[[Event], None] | None, started: float) -> None:
        self.on_progress = on_progress
        self._last = started  # a job over within a second shows no progress in Flower

    def offer(self, latest: Event | None, now: float) -> None:
        if latest is None or self.on_progress is None or now - self._last < PROGRESS_TO_CELERY_S:
            return
        self._last = now
        try:
            self.on_progress(latest)
        except Exception:  # Flower's view is best effort; the record is in fleet's keys
            log.debug("celery progress update failed", exc_info=True)


class Relay:
    """Moves a job's events to Redis (fenced), its output to `capture`, its progress to
    `celery`. `result`, `error` and `step` keep what the job last said."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, capture: LogCapture,
                 celery: CeleryProgress, commits: CheckpointCommits) -> None:
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self.capture, self.celery, self.commits = capture, celery, commits
        self.result: Event | None = None
        self.error: str | None = None
        self.step: int | None = None
        self.superseded = False
        self.unsent: list[Event] = []  # the final pump's progress, left for finish.lua
        self._latest: Event | None = None
        self._on: dict[str, Callable[[Event], None]] = {
            "resumed": self._resumed, "result": self._result, "error": self._error,
            "checkpoint": self._checkpoint,
        }

    def pump(self, pipes: JobPipes, vitals: Vitals, final: bool = False) -> bool:
        """Relay what arrived; True when progress moved. The progress of the `final` pump
        (the job has ended) is kept in `unsent`, to be recorded with the outcome."""
        output, events = pipes.take()
        reports, logged = self._take(events, vitals)
        if self.commits.pending is not None:
            self._write(self.commits.flush)  # before the progress that came after it
        if reports and final:
            self.unsent.extend(reports)
        elif reports:
            self._write(partial(self.store.progress_many, self.job_id, self.attempt, reports))
        if logged:
            output += ("\n".join(logged) + "\n").encode(errors="replace")
        self.capture.write(output)
        self.capture.flush()
        if not final:
            self.celery.offer(self._latest, vitals.now)
        return bool(reports)

    def _take(self, events: list[Event], vitals: Vitals) -> tuple[list[Event], list[str]]:
        """Act on each event in turn; the progress reports and log messages, to send batched."""
        reports: list[Event] = []
        logged: list[str] = []
        for event in events:
            kind = event.get("type")
            if kind == "progress":
                reports.append(self._progress(event, vitals))
            elif kind == "log":
                logged.append(str(event.get("message", "")))
            elif isinstance(kind, str) and kind in self._on:
                self._on[kind](event)
        return reports, logged

    def _progress(self, event: Event, vitals: Vitals) -> Event:
        self.step = int(event.get("step", 0))
        vitals.last_report_at = vitals.now
        self._latest = {**event, "attempt": self.attempt}
        return self._latest

    def _resumed(self, event: Event) -> None:
        self._write(partial(self.store.progress, self.job_id, self.attempt, event, kind="resumed"))

    def _result(self, event: Event) -> None:
        self.result = event.get("result") or {}

    def _error(self, event: Event) -> None:
        self.error = str(event.get("error"))

    def _checkpoint(self, event: Event) -> None:
        self.commits.announce(event.get("step"))

    def _write(self, op: Callable[[], bool]) -> None:
        try:
            if not op():
                self.superseded = True
        except REDIS_DOWN:
            pass  # progress is advisory while Redis is away; the outcome is retried


def _tail_start(data: bytes | bytearray, n: int) -> int:
    """Where the last `n` lines of `data` (complete lines) begin."""
    parts = data.rsplit(b"\n", n + 1)
    return len(parts[0]) + 1 if len(parts) == n + 2 else 0


def _last_lines(data: bytes | bytearray, n: int) -> list[str]:
    """The last `n` lines of `data` (complete lines, each ending in a newline), decoded: a
    split from the right, so its cost is the tail's, whatever came before."""
    parts = data.rsplit(b"\n", n + 1)[:-1]  # after the last newline: nothing
    return [p.decode(errors="replace") for p in parts[-n:]]
