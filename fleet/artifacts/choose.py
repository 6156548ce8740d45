"""Pure: which attempt's output a download takes, and where a stored name may be written.

No I/O: the job's record and its attempt records (as the store returns them) come in, a choice
or a one-line error goes out, so every rule is tested with plain values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError, NotFound

SUCCEEDED = "SUCCEEDED"


@dataclass(frozen=True)
class Choice:
    """The attempt whose output is downloaded; `note` says why it is not a succeeded one's
    (None when it is, or when the caller named the attempt)."""

    attempt: int
    note: str | None = None


def choose_attempt(
    job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]], wanted: int | None = None,
) -> Choice:
    """The attempt to download: `wanted` when given (it must exist); else the one that
    SUCCEEDED; else the latest one that started, with a note naming the job's state. A job no
    attempt of which has started has no output: FleetError."""
    job_id, state = str(job.get("id")), str(job.get("state"))
    current = int(job.get("attempt") or 0)
    if wanted is not None:
        if not 1 <= wanted <= current:
            raise NotFound(f"job {job_id} has no attempt {wanted} (it is at attempt {current})")
        return Choice(wanted, _running_note(job, wanted))
    if state == SUCCEEDED:
        won = [int(a["attempt"]) for a in attempts if a.get("end_reason") == SUCCEEDED]
        return Choice(max(won) if won else current)
    started = [int(a["attempt"]) for a in attempts if a.get("started_at") is not None]
    if not started:
        raise FleetError(f"job {job_id} has not run yet ({state}): it has no output to download")
    latest = max(started)
    reason = f" ({job['reason']})" if job.get("reason") else ""
    note = _running_note(job, latest) or f"attempt {latest}, the latest"
    return Choice(latest, f"job {job_id} is {state}{reason}, not SUCCEEDED: the output of {note}")


def _running_note(job: Mapping[str, Any], attempt: int) -> str | None:
    """Said of an attempt that may still be writing (the job's current one, not finished)."""
    if job.get("terminal") or attempt != int(job.get("attempt") or 0):
        return None
    return f"attempt {attempt}, still running: what it wrote so far"


def member_path(dest: Path, name: str) -> Path:
    """Where the stored file `name` (a relative, '/'-separated name) goes under `dest`. A name
    that could leave `dest` (absolute, empty, `.` or `..` parts, a NUL) is refused: the names
    come from the store, which a job (or, later, an object store's keys) may have shaped."""
    why = None
    if not name or name.startswith("/"):
        why = "is empty" if not name else "is absolute"
    elif "\0" in name:
        why = "holds a NUL byte"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        why = "has an empty, '.' or '..' part"
    if why is not None:
        raise FleetError(f"artifact name {name[:200]!r} {why}: refused, it could be written "
                         f"outside {dest}")
    return dest.joinpath(*name.split("/"))
