"""The node's fork server: each job process is forked from a warm interpreter, not exec'd.

Starting `python -m workers.process.jobproc` per job costs an interpreter start and its imports (~45 ms
here, more than the whole of a no-op job); forking a process that has them imported already
costs about a millisecond. So the supervisor starts one fork server per node
(`python -m workers.process.forkserver`, started after the node confined itself, so it and every job
are in the node's cgroups), with the environment a job may see (no broker credential) and no
framework imported: thread counts must be in the environment before torch or TensorFlow loads,
and each job's child sets its own before it imports anything of the job.

A forked job process is what an exec'd one was (see `workers.process.jobproc`, which both run):
- its own session and process group: the supervisor stops a job by killing its group;
- PR_SET_PDEATHSIG to the fork server, and the fork server ends as soon as the supervisor's
  end of its control socket closes (which the kernel does when the worker dies, SIGKILL
  included), killing its jobs' process groups first: a killed worker leaves no job behind;
- stdin: its order (JSON); stdout and stderr: its log; FLEET_EVENT_FD: its event pipe;
  its working directory, thread and GPU environment as the supervisor asks.
The server is also the subreaper of its jobs: what a job leaves orphaned is reaped, not left a
zombie of a worker running as a container's PID 1. And it fences them (see `workers.attempt.fence`):
it holds the node's lease deadline in a page every job shares, kills every job's group once
that deadline passes or the lease lapsed, and forks nothing while it has none. A job's
command line reads `python -m workers.process.jobproc`, as an exec'd one did (ps, pgrep and the
benchmarks find jobs so).

Protocol, over AF_UNIX SOCK_SEQPACKET sockets (one JSON message per packet):
- control socket, supervisor → server: `{"env": {...}, "cwd": "..."}` carrying four
  descriptors (SCM_RIGHTS): the order pipe's read end, the output pipe's and the event pipe's
  write ends, and one end of the job's own status socket;
- control socket, supervisor → server: `{"lease": T, "lapsed": bool}` (no descriptors): the
  node's lease holds until monotonic time T; `lapsed` says Redis had let it expire first;
- status socket, server → supervisor: `{"pid": N}` once forked, or `{"refused": why}` (no
  lease); then `{"exit": returncode, "maxrss": bytes, "fenced": bool}` once reaped (returncode
  as subprocess gives it: -signal when killed; `fenced`: the lease ran out under it).
  EOF before "exit" means the server died, and the job with it.
This module is the server; the supervisor's side is `workers.process.forkclient`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from workers.attempt import fence
from workers.process import jobproc

CTL_FD_ENV = "FLEET_FORKSERVER_FD"
_FDS = 4  # order (read), output (write), events (write), status socket
MAX_MESSAGE = 1 << 16
IDLE_WAKE_S = 1.0
_PR_SET_CHILD_SUBREAPER = 36


def serve(ctl: socket.socket) -> None:
    """Fork a job process per request until the control socket closes; fence them all.

    Returns only in a forked child, set up as its job process; the server itself never returns
    (it exits when its supervisor goes).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select through wake_w
    jobs: dict[int, int] = {}  # pid -> the fd of its status socket
    fenced: set[int] = set()  # jobs killed for the lease
    lease = fence.Lease()
    deadline = fence.SharedDeadline()  # mapped before any fork: every job shares it
    deadline.set(lease.until)
    title = _job_title()
    listen = ctl.fileno()
    while True:
        try:
            ready, _, _ = select.select([listen, wake_r], [], [],
                                        lease.wake_in(time.monotonic(), IDLE_WAKE_S))
        except InterruptedError:
            ready = []
        if lease.expired(time.monotonic()):  # before any renewal read below can count
            _fence(jobs, fenced)
        if wake_r in ready:
            _drain(wake_r)
        _reap(jobs, fenced, lease)
        if listen not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(ctl, MAX_MESSAGE, _FDS)
        except OSError:
            message, fds = b"", []
        if not message:  # the supervisor is gone: so are its jobs
            _shutdown(jobs)
        try:
            request = json.loads(message)
        except ValueError:
            request = {}
        if not isinstance(request, dict):
            request = {}
        if "lease" in request:
            for fd in fds:
                os.close(fd)
            try:
                until = float(request["lease"])
            except (TypeError, ValueError):
                until = float("-inf")  # not a deadline: as good as none
            if lease.renew(until, bool(request.get("lapsed")), time.monotonic()):
                _fence(jobs, fenced)  # killed before the new deadline is visible to them
            deadline.set(lease.until)
            continue
        if len(fds) != _FDS or "env" not in request:
            for fd in fds:
                os.close(fd)
            continue
        if lease.expired(time.monotonic()):
            for fd in fds[:3]:
                os.close(fd)
            _send(fds[3], {"refused": "this node's lease is not renewed: no job starts"})
            os.close(fds[3])
            continue
        pid = os.fork()
        if pid == 0:
            fence.install(deadline)
            _become_job(request, fds, ctl, [wake_r, wake_w, *jobs.values()], title)
            return
        for fd in fds[:3]:
            os.close(fd)
        jobs[pid] = fds[3]
        _send(fds[3], {"pid": pid})


def _fence(jobs: dict[int, int], fenced: set[int]) -> None:
    """Kill every job not killed for the lease yet (reaped and reported by `_reap`)."""
    for pid in jobs:
        if pid not in fenced:
            kill_group(pid)
            fenced.add(pid)


def _become_job(request: dict[str, Any], fds: list[int], ctl: socket.socket,
                others: list[int], title: tuple[int, bytes] | None) -> None:
    """In the forked child: become the job process `python -m workers.process.jobproc` would be."""
    server = os.getppid()
    os.setsid()  # its own session and process group
    if title is not None:
        _set_title(*title)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctl.close()
    order, output, events, status = fds
    for fd in (*others, status):
        os.close(fd)
    os.dup2(order, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(order)
    os.close(output)
    os.environ.update(request["env"])
    os.environ[jobproc.EVENT_FD_ENV] = str(events)
    os.environ[jobproc.PARENT_ENV] = str(server)
    os.chdir(request["cwd"])


def _job_title() -> tuple[int, bytes] | None:
    """(where this process's command line is in its memory, a job's command line of the same
    length) or None where /proc does not say. Forked children share the layout."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49
        with open("/proc/self/cmdline", "rb") as f:
            line = f.read()[: end - start]
    except (OSError, ValueError, IndexError):
        return None
    ours, theirs = b"workers.process.forkserver", b"workers.process.jobproc"
    if ours not in line:
        return None
    return start, line.replace(ours, theirs + b"\0" * (len(ours) - len(theirs)), 1)


def _set_title(start: int, line: bytes) -> None:
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(line)
    except OSError:  # cosmetic: a job is a job whatever ps calls it
        pass


def _reap(jobs: dict[int, int], fenced: set[int], lease: fence.Lease) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = jobs.pop(pid, None)
        if fd is None:  # an orphan a job left, reparented here (we are their subreaper)
            continue
        kill_group(pid)  # what the job left behind in its group goes with it
        code = os.waitstatus_to_exitcode(status)
        # killed by us, or by its own fence (it saw the deadline pass before we looked)
        was_fenced = pid in fenced or (code == -signal.SIGKILL and lease.expired(time.monotonic()))
        fenced.discard(pid)
        _send(fd, {"exit": code, "maxrss": usage.ru_maxrss * 1024, "fenced": was_fenced})
        os.close(fd)


def _shutdown(jobs: dict[int, int]) -> None:
    for pid in jobs:
        kill_group(pid)
    os._exit(0)


def kill_group(pgid: int) -> None:
    """SIGKILL a job's whole process group (the children it left behind go with it); one
    already gone is no error."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _send(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(message).encode())
    except OSError:  # its supervisor stopped listening: nothing to tell
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main() -> int:
    ctl = socket.socket(fileno=int(os.environ.pop(CTL_FD_ENV)))
    jobproc.preload()
    prctl = jobproc.libc_prctl()
    if prctl is not None:  # what a job leaves orphaned is reparented here, and reaped
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
    serve(ctl)  # returns only in a job process
    jobproc.exit_now(jobproc.main())
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main())
