"""A job's captured output, per attempt: read a finished attempt, follow a running job.

The node's supervisor appends each attempt's stdout and stderr lines to a Redis list (the last
`LOG_LINES_CAP` lines) and to `<artifacts>/jobs/<job>/attempt-<n>/output.log` (the newest
`FLEET_LOG_MAX_BYTES` of them, in two halves: `output.log.1` the older, and a note of what was
cut before it). Both outlive the node: Redis is the fleet's own store, the file is in the
artifact store. Reads prefer Redis (it is shared by every machine); when the list is full (lines
were dropped from its head) and the artifact file is reachable from here, the file holds more
and is read instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import NotFound

if TYPE_CHECKING:
    from fleet.store.protocol import JobReads

LOG_LINES_CAP = 5000  # lines the supervisor keeps in Redis per attempt (the file keeps more)
LOG_NAME = "output.log"


@dataclass(frozen=True)
class LogLine:
    attempt: int
    text: str


def attempt_dir(artifacts: Path, job_id: str, attempt: int) -> Path:
    """One attempt's folder in the artifact store: its working directory and its log."""
    return artifacts / "jobs" / job_id / f"attempt-{attempt}"


def log_file(artifacts: Path, job_id: str, attempt: int) -> Path:
    """Where the supervisor writes the full log of one attempt."""
    return attempt_dir(artifacts, job_id, attempt) / LOG_NAME


def older_half(path: Path) -> Path:
    """The older half of a capped log: `output.log.1` beside `output.log`."""
    return path.with_name(path.name + ".1")


_NOTE_HEAD, _NOTE_TAIL = "[fleet: ", " of earlier output cut]"


def cut_note(cut: int) -> str:
    """The line that says how much output was dropped before what a log keeps."""
    mib = cut / 2**20
    return f"{_NOTE_HEAD}{mib:.{0 if mib >= 10 else 1}f} MiB{_NOTE_TAIL}"


def read_stored(path: Path) -> str:
    """A capped log as one text, in order: the cut note (when output was dropped), the older
    half, the newer half. Empty when neither half exists."""
    newer = _read(path)
    older = _read(older_half(path))
    note, newer = _split_note(newer)
    return note + _split_note(older)[1] + newer


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _split_note(text: str) -> tuple[str, str]:
    """(the note line with its newline, or "", the rest)."""
    first, newline, rest = text.partition("\n")
    if newline and first.startswith(_NOTE_HEAD) and first.endswith(_NOTE_TAIL):
        return first + newline, rest
    return "", text


class JobLogs:
    """Reads one job's attempt logs. The store (Redis's or its in-memory twin: the job's record
    and its kept lines) and the artifact root are passed in."""

    def __init__(self, store: JobReads, artifacts: Path, job_id: str) -> None:
        self.store = store
        self.artifacts = artifacts
        self.job_id = job_id

    def job_attempt(self) -> tuple[int, bool]:
        """(current attempt number, job is terminal). NotFound for an unknown job."""
        job = self.store.get(self.job_id)
        if job is None:
            raise NotFound(f"no job {self.job_id!r}")
        return int(job.get("attempt") or 0), bool(job.get("terminal"))

    def lines(self, attempt: int) -> list[str]:
        """Every line kept for `attempt` (the stored file when Redis dropped some)."""
        kept = self.store.log_lines(self.job_id, attempt)
        path = log_file(self.artifacts, self.job_id, attempt)
        if (not kept or len(kept) >= LOG_LINES_CAP) and path.is_file():
            return read_stored(path).splitlines()
        return kept

    def follow(
        self, attempt: int | None = None, *, interval: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[LogLine]:
        """Lines as they arrive, of `attempt` or (None) of every attempt as the job moves on,
        until the job is terminal and its last lines are read.

        Reads the Redis list from the last index seen, so a line is yielded once; past the cap
        (LOG_LINES_CAP lines) the list drops its head and following may skip lines: the artifact file
        keeps more (FLEET_LOG_MAX_BYTES of the newest).
        """
        seen: dict[int, int] = {}
        while True:
            current, terminal = self.job_attempt()
            wanted = [attempt] if attempt is not None else list(range(1, current + 1))
            for n in wanted:
                start = seen.get(n, 0)
                new = self.store.log_lines(self.job_id, n, start)
                seen[n] = start + len(new)
                for text in new:
                    yield LogLine(n, text)
            if terminal or (attempt is not None and current > attempt):
                return  # the attempt followed is over: no line can come after this read
            sleep(interval)

