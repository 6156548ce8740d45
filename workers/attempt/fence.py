"""Self-fencing: a node's jobs run only while the node's lease in Redis holds.

The master re-places a node's jobs once the node's report key (its lease) expires, one
heartbeat TTL after the last renewal Redis applied. A node that cannot renew (its worker
paused, the whole node paused, Redis unreachable from it) must have stopped its jobs by then,
or two attempts of one job run at once (DESIGN.md, invariant 8). So:

- the agent, after each heartbeat Redis applied, tells the fork server "valid until T", with
  T = (CLOCK_MONOTONIC when that heartbeat was *sent*) + FENCE_FRACTION × TTL. Redis applied
  it after it was sent, so the lease lasts at least TTL past the send: T is earlier by
  (1 - FENCE_FRACTION) × TTL, the margin for killing and for clocks;
- the heartbeat step says whether the lease was *continued* (the key still held this
  incarnation) or had *lapsed* (expired, so the master may have re-placed what ran here): a
  lapse kills every job before the new lease counts, so a late renewal never revives them;
- the fork server keeps T in a shared memory page (`SharedDeadline`), mapped before it forks
  any job; it kills every job's process group once T passes and forks nothing until renewed;
- each job process checks the same page (`Fence`) in `ctx.report`, `ctx.checkpoint`,
  `ctx.should_stop` and `ctx.wait`, and a watchdog thread checks it between them: after a
  whole node is resumed from SIGSTOP a job may run before its fork server does.

CLOCK_MONOTONIC is system-wide and counts on while processes are stopped, so every process of
a node compares the same clock. `Lease` is the pure part: no I/O, tested with plain numbers.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import threading
import time
from dataclasses import dataclass

FENCE_FRACTION = 0.6  # of the heartbeat TTL: how long one applied heartbeat keeps jobs alive
WATCH_MAX_SLEEP_S = 0.5  # the job's watchdog looks at least this often (the deadline moves)
_NS = 1_000_000_000


def lease_until(sent: float, ttl: float) -> float:
    """Until when (monotonic seconds) a heartbeat sent at `sent` lets this node's jobs run."""
    return sent + FENCE_FRACTION * ttl


@dataclass
class Lease:
    """The fork server's view of the node's lease (monotonic seconds; pure)."""

    until: float = float("-inf")  # no lease yet: nothing may be forked

    def expired(self, now: float) -> bool:
        return now >= self.until

    def renew(self, until: float, lapsed: bool, now: float) -> bool:
        """Take a renewal; True when every running job must be killed before it counts.

        A lapsed lease (Redis had let it expire) or one that had run out here means the master
        may have re-placed the jobs: they die, whatever the new deadline says. Renewals arrive
        in order but may be stale; a continued one never moves the deadline back.
        """
        kill = lapsed or self.expired(now)
        self.until = until if lapsed else max(self.until, until)
        return kill

    def wake_in(self, now: float, idle: float) -> float:
        """Seconds the server may sleep before it must look at the deadline again."""
        if self.expired(now):
            return idle
        return max(0.0, min(idle, self.until - now))


class SharedDeadline:
    """The deadline in an anonymous shared page: written by the fork server, read by every job
    it forked (they inherit the mapping). One aligned 64-bit word, so never read torn."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._word = ctypes.c_int64.from_buffer(self._page)  # monotonic nanoseconds

    def set(self, until: float) -> None:
        self._word.value = _ns(until)

    def passed(self) -> bool:
        return time.monotonic_ns() >= self._word.value

    def left(self) -> float:
        """Seconds until the deadline (negative once passed)."""
        return (self._word.value - time.monotonic_ns()) / _NS


def _ns(seconds: float) -> int:
    if seconds == float("inf"):
        return 2**63 - 1
    if seconds == float("-inf"):
        return -(2**63)
    return int(seconds * _NS)


class Fence:
    """A job process's side: end the job's whole process group at once when the lease ran out.

    SIGKILL to its own group (the job leads it): no handler, no cleanup, nothing the job's code
    could do after the deadline. The fork server sees the exit and calls it fenced.
    """

    def __init__(self, deadline: SharedDeadline) -> None:
        self.deadline = deadline

    def check(self) -> None:
        if self.deadline.passed():
            die()

    def watch(self) -> None:
        """Start the watchdog thread: checks between the job's own calls into `ctx`."""
        threading.Thread(target=self._watch, daemon=True, name="fence").start()

    def _watch(self) -> None:
        while True:
            left = self.deadline.left()
            if left <= 0:
                die()
            time.sleep(min(left, WATCH_MAX_SLEEP_S))


def die() -> None:
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


# The fence of this process when it is a job forked by the fork server (set in the child).
_installed: Fence | None = None


def install(deadline: SharedDeadline) -> None:
    global _installed
    _installed = Fence(deadline)


def installed() -> Fence | None:
    return _installed
