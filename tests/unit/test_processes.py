"""Stopping a fleet's processes: SIGTERM and a grace, then SIGKILL; grace 0 is a crash."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from fleet.drivers.processes import alive, stop_processes

IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(1, flush=True); time.sleep(60)")


def child(code: str = "import time; print(1, flush=True); time.sleep(60)") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "1"  # handlers set
    proc.stdout.close()  # nothing more is read: an open pipe would be a ResourceWarning
    return proc


def test_a_child_that_exits_on_sigterm_is_reaped() -> None:
    proc = child()
    stop_processes([proc], grace=5)
    assert proc.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = child(IGNORES_TERM)
    started = time.monotonic()
    stop_processes([proc], grace=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5


def test_grace_0_is_a_crash_sigkill_at_once() -> None:
    proc = child()
    stop_processes([proc], grace=0)
    assert proc.returncode == -signal.SIGKILL


def test_a_pid_is_stopped_too_and_a_reaped_child_is_left_alone() -> None:
    proc, gone = child(), child()
    gone.kill()
    gone.wait()
    stop_processes([proc.pid, gone], grace=5)
    proc.wait(5)
    assert proc.returncode == -signal.SIGTERM and not alive(proc.pid)
    assert gone.returncode == -signal.SIGKILL
