"""The job process: one per attempt, forked by the node's fork server (`workers.forkserver`),
or started on its own as `python -m workers.jobproc`; the same `main` runs either way.

It reads its instructions (JSON) from stdin, pins itself to the cores it was given, sets thread
counts before any framework is imported, checks the entry point against the allowlist once more,
and calls `function(ctx, **params)`. Events (progress, checkpoints, the result) go to the
supervisor as JSON lines on the pipe named by FLEET_EVENT_FD; stdout and stderr are the job's
log. It dies with its supervisor: a SIGKILLed worker leaves no orphan training on.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

EVENT_FD_ENV = "FLEET_EVENT_FD"
EVENTS_FLUSH_S = 0.25  # events wait at most this long to share one write with others
TERMINAL = frozenset({"result", "error"})  # written at once: the job is about to exit
PARENT_ENV = "FLEET_JOB_PARENT"  # the pid this process must die with (set by the fork server)
_PR_SET_PDEATHSIG = 1


def preload() -> None:
    """What `main` loads, loaded ahead (by the fork server, so its children need not)."""
    from fleet import entrypoints  # noqa: F401
    from workers import context, runners  # noqa: F401

    libc_prctl()


@functools.cache
def libc_prctl() -> Any:
    """libc's prctl(2), or None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent() -> None:
    """SIGKILL when the parent (the fork server, or whoever started this process) dies."""
    expected = os.environ.get(PARENT_ENV)
    parent = int(expected) if expected else os.getppid()
    prctl = libc_prctl()
    armed = prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(137)
    if armed:
        return

    def watch() -> None:  # where prctl is unavailable: look every half second
        while True:
            if os.getppid() != parent:
                os._exit(137)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def exit_now(code: int) -> NoReturn:
    """End the process as interpreter shutdown would, less tearing down every module (which
    costs ~15 ms, more than a no-op job): the job's non-daemon threads are waited for, atexit
    handlers run, output is flushed."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


class EventWriter:
    """Writes events to the supervisor as JSON lines, in batches.

    A training loop may report and checkpoint hundreds of times a second; one write per event
    would wake the supervisor as often, on the job's own core (issue 7). Events are therefore
    held for at most `interval` seconds and written together; every event still arrives, in
    order. The job's outcome (result, error) is written at once, after what was held. A thread
    that sleeps until a batch is due bounds the delay however long the job goes between
    events; a SIGKILL loses at most `interval` seconds of them, which the next attempt reports
    again from its checkpoint.
    """

    def __init__(self, fd: int, interval: float = EVENTS_FLUSH_S) -> None:
        self._fd = fd
        self._interval = interval
        self._held: list[str] = []
        self._due: float | None = None  # when the held progress must be written
        self._cond = threading.Condition()
        self._flusher_started = False  # started with the first held event: a no-op needs none
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A child the job forks (a data loader worker) starts empty, with a thread of its own
        when it reports: the parent's held events stay the parent's to write."""
        self._held, self._due = [], None
        self._cond = threading.Condition()
        self._flusher_started = False

    def emit(self, event: dict) -> None:
        line = json.dumps(event, default=float)
        with self._cond:
            self._held.append(line)
            if event.get("type") in TERMINAL:
                self._flush()
            elif self._due is None:
                self._due = time.monotonic() + self._interval
                if not self._flusher_started:
                    self._flusher_started = True
                    threading.Thread(target=self._flusher, daemon=True, name="fleet-events").start()
                self._cond.notify()

    def _flusher(self) -> None:
        with self._cond:
            while True:
                if self._due is None:
                    self._cond.wait()
                elif (left := self._due - time.monotonic()) > 0:
                    self._cond.wait(left)
                else:
                    self._flush()

    def _flush(self) -> None:  # with the lock held
        data = ("\n".join(self._held) + "\n").encode()
        self._held.clear()
        self._due = None
        while data:
            data = data[os.write(self._fd, data):]


def main() -> int:
    _die_with_parent()
    order: dict[str, Any] = json.loads(sys.stdin.read())
    emit = EventWriter(int(os.environ[EVENT_FD_ENV])).emit

    from fleet.entrypoints import check_entrypoint
    from workers import runners
    from workers.context import JobContext, Resources

    res = order["resources"]
    resources = Resources(
        cpus=float(res["cpus"]), memory=int(res["memory"]), gpus=int(res.get("gpus", 0)),
        cpuset=tuple(res.get("cpuset", ())), gpu_ids=tuple(res.get("gpu_ids", ())),
    )
    if resources.cpuset:
        os.sched_setaffinity(0, resources.cpuset)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a polite stop: drain or cancel
    try:
        module_name, func_name = check_entrypoint(order["entrypoint"], order["allowlist"])
        runners.prepare(order["framework"], resources)
        function = getattr(importlib.import_module(module_name), func_name)
        ctx = JobContext(
            job_id=order["job_id"], attempt=int(order["attempt"]), resources=resources,
            workdir=Path(order["workdir"]), checkpoint_dir=Path(order["checkpoint_dir"]),
            emit=emit, stop=stop,
        )
        result = function(ctx, **order.get("params", {})) or {}
        emit({"type": "result", "result": json.loads(json.dumps(result, default=float))})
        return 0
    except BaseException as exc:  # noqa: BLE001 - any failure of the job is its outcome
        traceback.print_exc()
        emit({"type": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    exit_now(main())
