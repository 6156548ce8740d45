"""Stopping a local fleet's processes: one way, for `fleet down`, the keeper, tests and chaos runs.

A shutdown is SIGTERM, a grace to exit (a worker's warm shutdown waits for its jobs), then
SIGKILL to the process group of whatever is left (each fleet process leads its own session, so
its group is it and what it started), to the process alone where it leads none. A grace of 0 is
a crash: SIGKILL at once, nothing warm. A child this process started (a Popen) is reaped, and
never signalled once it was: its pid may be another process's by then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

Target = int | subprocess.Popen[Any]
STOP_GRACE_S = 15.0
POLL_S = 0.1
REAP_S = 5.0  # a SIGKILLed child is gone well within this


def stop_processes(targets: Sequence[Target], grace: float = STOP_GRACE_S) -> None:
    """Stop `targets` (pids, or Popen children to reap): SIGTERM, up to `grace` seconds, then
    SIGKILL; grace 0 kills at once."""
    children = {t.pid: t for t in targets if isinstance(t, subprocess.Popen)}
    pids = [t if isinstance(t, int) else t.pid for t in targets]
    left = [pid for pid in pids if pid not in children or children[pid].poll() is None]
    if grace > 0:
        for pid in left:
            _signal(pid, signal.SIGTERM)
        left = wait_exit(left, grace, children)
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            _signal(pid, signal.SIGKILL)
    for child in children.values():
        child.wait(REAP_S)


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_exit(pids: list[int], timeout: float,
              children: Mapping[int, subprocess.Popen[Any]] | None = None) -> list[int]:
    """Wait up to `timeout` seconds for `pids` to exit; those still running. Children are
    polled through their Popen, which reaps them."""
    children = children or {}

    def running(pid: int) -> bool:
        return children[pid].poll() is None if pid in children else alive(pid)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if running(p)]
        if not left:
            return []
        time.sleep(POLL_S)
    return [p for p in pids if running(p)]


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
