"""The states a job and an attempt go through. Terminal states are final: exactly one per job."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"  # accepted, waiting for a node that fits
    PLACED = "PLACED"  # reserved on a node, task published to the node's queue
    RUNNING = "RUNNING"  # an attempt claimed it and its process runs
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


class EndReason(str, Enum):
    """Why an attempt ended. Infrastructure reasons do not count against max_retries.

    DISK is the node's fault but counts: its node stops taking work until it can write, and a
    job that fills the disk itself must not be retried without end."""

    SUCCEEDED = "SUCCEEDED"
    ERROR = "ERROR"  # the job's code raised or exited non-zero
    OOM = "OOM"  # used more memory than it asked for
    TIMEOUT = "TIMEOUT"  # ran past spec.timeout
    STALLED = "STALLED"  # reported no step for spec.stall_timeout
    CANCELLED = "CANCELLED"
    NODE_LOST = "NODE_LOST"  # its node stopped heartbeating
    WORKER_LOST = "WORKER_LOST"  # its supervisor died under it
    REJECTED = "REJECTED"  # refused at the worker (allowlist, bad payload)
    DISK = "DISK"  # the node could not write its artifacts (full, quota, read-only, I/O error)
    ENV_FAILED = "ENV_FAILED"  # its requirements could not be installed (pip failed or timed out)

    @property
    def infrastructure(self) -> bool:
        return self in (EndReason.NODE_LOST, EndReason.WORKER_LOST)
