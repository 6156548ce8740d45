"""How an attempt ended, decided from what its supervisor saw: one table of precedence, no I/O.

Several endings can compete for one attempt: its process exits (code or signal), a watch stops
it (memory, timeout, cancel, stall: the first watch to fire, in the supervisor's order), the
kernel's OOM killer takes it, the fork server fences it (the node's lease ran out) or dies under
it, another attempt supersedes it (a fenced write was refused), the node's disk fails under its
log, or the job itself dies of a disk errno. The supervisor gathers what it saw into an `Ending`;
`decide` walks `PRECEDENCE` from the top and the first row that holds names the outcome.

What the rows say, and why in this order:
- an attempt that is no longer the job's (superseded, fenced) records nothing of its own: the
  job's record belongs to whoever holds it now;
- a log the node could not write stops the job (DISK, the node's fault); the same error after the
  job ended leaves the job's own outcome standing, noted as `log_error`. Either way, unless the
  attempt was superseded or fenced, the node's disk is marked failed;
- a watch's verdict is why the supervisor killed the process, so it explains the exit code;
- success needs exit code 0 and a result; anything that changed the exit code beats it;
- a SIGKILL with the cgroup's oom_kill counter up is the kernel's OOM killer, not the job's bug;
- a dead fork server took the job with it (the worker's fault, not counted);
- a job that died of a disk errno while the node's disk is indeed full or read-only is the
  node's fault (DISK), else it is the job's own error.

A node asked to drain ends no attempt (it only takes no new one), so drain has no row; what
arrives while the job's pipes drain after its exit counts as seen after the end (see `log_error`).

Endings before any process exists are not in the table: a bundle that cannot be used (REJECTED,
`workers.attempt.bundles`) and an env that cannot be built (ENV_FAILED, pip's last lines in the
reason, `workers.attempt.environment`) end the job at once, final, since a retry would meet the
same bundle or the same requirements; a cancel while the env builds ends it CANCELLED.

Two facts cost I/O: the oom_kill counter after the job, and whether the node's disk is full.
They are callables in `Ending`, asked only when their row is reached.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fleet.states import EndReason
from workers.attempt.watch import Verdict
from workers.node import disk

SUPERSEDED = "attempt superseded"
FENCED = "fenced: the node could not renew its lease in time"
KERNEL_OOM = "OOM: killed by the kernel's OOM killer"
SERVER_LOST = "the node's fork server died under the job"


def _unknown() -> int | None:
    return None


def _healthy() -> str | None:
    return None


@dataclass(frozen=True)
class Ending:
    """What the supervisor saw of one attempt's end."""

    returncode: int | None  # as subprocess gives it: -N when killed by signal N
    result: Mapping[str, Any] | None = None  # the job's result event
    job_error: str | None = None  # the job's error event
    superseded: bool = False  # stopped because a fenced write was refused: not its attempt now
    fenced: bool = False  # the fork server killed it: the node's lease ran out under it
    verdict: Verdict | None = None  # the watch that stopped it
    log_disk_error: str | None = None  # its output.log could not be written (named errno)
    stopped_for_disk: bool = False  # ... and it was stopped for that (it was still running)
    server_lost: bool = False  # the fork server died under it
    oom_kills_before: int | None = None  # the cgroup's oom_kill counter before it started
    oom_kills_now: Callable[[], int | None] = _unknown  # ... and now (read on demand)
    disk_fault: Callable[[], str | None] = _healthy  # what is wrong with the node's disk now


@dataclass(frozen=True)
class Decision:
    """The outcome, and what the node's disk health must be told."""

    reason: EndReason
    error: str = ""
    final: bool = False  # end the job now, whatever retries remain
    result: Mapping[str, Any] | None = None
    row: str = ""  # the row of PRECEDENCE that decided
    disk_faults: tuple[str, ...] = field(default=())  # for DiskHealth.fail, in this order
    log_error: str | None = None  # the log failed after the job ended: kept in its record


Row = Callable[[Ending], "Decision | None"]


def _superseded(e: Ending) -> Decision | None:
    return Decision(EndReason.NODE_LOST, SUPERSEDED) if e.superseded else None


def _fenced(e: Ending) -> Decision | None:
    return Decision(EndReason.NODE_LOST, FENCED) if e.fenced else None


def _stopped_for_disk(e: Ending) -> Decision | None:
    if e.stopped_for_disk and e.log_disk_error is not None:
        return Decision(EndReason.DISK, e.log_disk_error)
    return None


def _watched(e: Ending) -> Decision | None:
    v = e.verdict
    return None if v is None else Decision(v.reason, v.error, final=v.final)


def _succeeded(e: Ending) -> Decision | None:
    if e.returncode == 0 and e.result is not None:
        return Decision(EndReason.SUCCEEDED, result=e.result)
    return None


def _kernel_oom(e: Ending) -> Decision | None:
    if e.returncode != -signal.SIGKILL or e.oom_kills_before is None:
        return None
    after = e.oom_kills_now()
    if after is not None and after > e.oom_kills_before:
        return Decision(EndReason.OOM, KERNEL_OOM)
    return None


def _server_lost(e: Ending) -> Decision | None:
    return Decision(EndReason.WORKER_LOST, SERVER_LOST) if e.server_lost else None


def _disk_errno(e: Ending) -> Decision | None:
    error = _job_error(e)
    if disk.errno_in(error) is None:
        return None
    fault = e.disk_fault()
    if fault is None:
        return None
    return Decision(EndReason.DISK, f"{fault} (the job: {error})", disk_faults=(fault,))


def _failed(e: Ending) -> Decision:
    return Decision(EndReason.ERROR, _job_error(e))


def _job_error(e: Ending) -> str:
    return e.job_error or f"exited with code {e.returncode}"


#: From the top, the first row that holds decides; the last always does.
PRECEDENCE: tuple[tuple[str, Row], ...] = (
    ("superseded", _superseded),
    ("fenced", _fenced),
    ("disk", _stopped_for_disk),
    ("watch", _watched),
    ("succeeded", _succeeded),
    ("kernel_oom", _kernel_oom),
    ("server_lost", _server_lost),
    ("disk_errno", _disk_errno),
    ("error", _failed),
)
#: Rows that leave the node's disk alone: the attempt was not this node's to record any more.
NOT_OURS = frozenset({"superseded", "fenced"})


def decide(e: Ending) -> Decision:
    """The outcome of the attempt `e` describes (see the module's docstring for the order)."""
    found = next(replace(d, row=row) for row, rule in PRECEDENCE if (d := rule(e)) is not None)
    row = found.row
    if e.log_disk_error is None or row in NOT_OURS:
        return found
    return replace(
        found,
        disk_faults=(e.log_disk_error, *found.disk_faults),
        log_error=None if row == "disk" else e.log_disk_error,
    )
