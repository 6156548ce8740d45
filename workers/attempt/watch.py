"""Watchdogs around a running job: memory, wall-clock timeout, stall, cancel.

Each is a small object with one `check` hook (dramatiq's middleware shape): the supervisor calls
every watch on each tick and stops the job on the first verdict. Adding a limit means adding a
watch, not a branch in the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleet.states import EndReason
from fleet.units import format_memory


@dataclass
class Vitals:
    """What the supervisor knows of a job process at one tick."""

    now: float
    started_at: float
    last_report_at: float
    memory: int
    peak_memory: int


@dataclass(frozen=True)
class Verdict:
    reason: EndReason
    error: str
    final: bool = False  # end the job now instead of retrying


class Watch(Protocol):
    def check(self, v: Vitals) -> Verdict | None: ...


@dataclass
class MemoryWatch:
    """A job over the memory it asked for is killed alone, so its node keeps serving."""

    limit: int

    def check(self, v: Vitals) -> Verdict | None:
        if v.memory > self.limit:
            return Verdict(
                EndReason.OOM,
                f"OOM: used {format_memory(v.memory)}, over its {format_memory(self.limit)}",
            )
        return None


@dataclass
class TimeoutWatch:
    timeout: float

    def check(self, v: Vitals) -> Verdict | None:
        if v.now - v.started_at > self.timeout:
            return Verdict(EndReason.TIMEOUT, f"ran past its timeout of {self.timeout:g}s", True)
        return None


@dataclass
class StallWatch:
    """No progress report for `stall_timeout` seconds: a hung job, not a slow one."""

    stall_timeout: float

    def check(self, v: Vitals) -> Verdict | None:
        if v.now - v.last_report_at > self.stall_timeout:
            return Verdict(EndReason.STALLED, f"no progress for {self.stall_timeout:g}s")
        return None


@dataclass
class CancelWatch:
    """Polls fleet's own cancel flag: Celery's revoke(terminate=True) is unreliable."""

    is_cancelled: Callable[[], bool]
    every: float = 0.5
    _last: float = 0.0

    def check(self, v: Vitals) -> Verdict | None:
        if v.now - self._last < self.every:
            return None
        self._last = v.now
        if self.is_cancelled():
            return Verdict(EndReason.CANCELLED, "cancelled by request", True)
        return None


def first_verdict(watches: list[Watch], vitals: Vitals) -> Verdict | None:
    for watch in watches:
        verdict = watch.check(vitals)
        if verdict is not None:
            return verdict
    return None
