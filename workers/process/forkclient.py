"""The supervisor's side of the node's fork server: start it, hand it the lease, ask for jobs.

`ForkServer` starts (and restarts) `python -m workers.process.forkserver` and talks to it over
its control socket; each job it forks comes back as a `JobProcess`, the few Popen methods the
supervisor needs, read from the job's own status socket. The protocol is in
`workers.process.forkserver`'s docstring.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from workers.process.forkserver import CTL_FD_ENV, MAX_MESSAGE

SPAWN_TIMEOUT_S = 30.0


class LeaseLapsed(OSError):
    """The fork server forks nothing: this node's lease is not known to hold."""


class JobProcess:
    """A job process forked by the server: Popen's few methods the supervisor needs.

    `events` and `output` are the read ends of its event and output pipes (the caller reads and
    closes them); `returncode` is set once `status` says the process was reaped.
    """

    def __init__(self, pid: int, status: socket.socket, events: int, output: int) -> None:
        self.pid = pid
        self.status = status
        self.events = events
        self.output = output
        self.returncode: int | None = None
        self.maxrss = 0
        self.server_lost = False  # the fork server died: the job died with it (PDEATHSIG)
        self.fenced = False  # killed because the node's lease ran out (or lapsed) under it

    def read_status(self) -> None:
        """Read the status socket (call when it is readable): sets `returncode` on exit."""
        try:
            data = self.status.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self.returncode is None:
                self.returncode, self.server_lost = -signal.SIGKILL, True
            return
        message = json.loads(data)
        if "exit" in message:
            self.returncode = int(message["exit"])
            self.maxrss = int(message.get("maxrss") or 0)
            self.fenced = bool(message.get("fenced"))

    def poll(self) -> int | None:
        if self.returncode is None and _readable(self.status.fileno(), 0):
            self.read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The return code, or None if still running after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _readable(self.status.fileno(), left):
                return None
            self.read_status()
        return self.returncode

    def close(self) -> None:
        self.status.close()


class ForkServer:
    """Starts (and restarts) a node's fork server and asks it for job processes. Thread-safe."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._lock = threading.Lock()
        self._lease: float | None = None  # the last deadline given, for a restarted server

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server unless it runs (also what `spawn` does after it died)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._ctl is not None:
            return self._ctl
        if self._ctl is not None:
            self._ctl.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "workers.process.forkserver"], stdin=subprocess.DEVNULL,
                env={**self.env, CTL_FD_ENV: str(theirs.fileno())}, pass_fds=[theirs.fileno()],
                start_new_session=True,  # a terminal's ^C goes to the worker, not to its jobs
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._ctl = ours
        if self._lease is not None:  # a fresh server runs no job yet: nothing to revive
            _send_lease(ours, self._lease, lapsed=True)
        return ours

    def renew(self, until: float, lapsed: bool = False) -> None:
        """The node's lease holds until monotonic time `until`; `lapsed`: it had expired in
        Redis before this renewal (the server kills what runs before the new lease counts).
        A server not running yet gets it when started."""
        with self._lock:
            self._lease = until
            if self._ctl is not None:
                _send_lease(self._ctl, until, lapsed)

    def spawn(self, env: Mapping[str, str], cwd: Path, order: bytes) -> JobProcess:
        """Fork a job process with `env` added to the server's environment, in `cwd`, and hand
        it `order` on its stdin. Restarts a dead server once; raises OSError if that fails."""
        for _ in range(2):
            with self._lock:
                ctl = self._ensure()
            job = self._request(ctl, env, cwd, order)
            if job is not None:
                return job
            with self._lock:
                if self._ctl is ctl:  # nobody restarted it meanwhile: it is dead or stuck
                    self._stop_locked()
        raise OSError("the node's fork server does not answer")

    def _request(
        self, ctl: socket.socket, env: Mapping[str, str], cwd: Path, order: bytes
    ) -> JobProcess | None:
        order_r, order_w = os.pipe()
        out_r, out_w = os.pipe()
        ev_r, ev_w = os.pipe()
        status, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        message = json.dumps({"env": dict(env), "cwd": str(cwd)}).encode()
        os.set_blocking(order_w, False)  # the order waits in the pipe: the child reads at once
        try:
            written = os.write(order_w, order)
        except BlockingIOError:
            written = 0
        os.set_blocking(order_w, True)
        try:
            socket.send_fds(ctl, [message], [order_r, out_w, ev_w, theirs.fileno()])
            sent = True
        except OSError:
            sent = False
        finally:
            for fd in (order_r, out_w, ev_w):
                os.close(fd)
            theirs.close()
        pid = refused = None
        if sent and _readable(status.fileno(), SPAWN_TIMEOUT_S):
            try:
                data = status.recv(MAX_MESSAGE)
                answer = json.loads(data) if data else {}
                pid, refused = answer.get("pid"), answer.get("refused")
            except (OSError, ValueError, AttributeError):
                pid = None
        if pid is None:
            for fd in (order_w, out_r, ev_r):
                os.close(fd)
            status.close()
            if refused:
                raise LeaseLapsed(str(refused))
            return None
        _write_all(order_w, order[written:])  # what did not fit in the pipe, then EOF
        return JobProcess(int(pid), status, ev_r, out_r)

    def stop(self) -> None:
        """Close the control socket: the server kills what it still runs and exits."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def _send_lease(ctl: socket.socket, until: float, lapsed: bool) -> None:
    try:
        ctl.send(json.dumps({"lease": until, "lapsed": lapsed}).encode())
    except OSError:  # the server is gone; `spawn` restarts it and gives it the lease then
        pass


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000 + 0.999)))


def _write_all(fd: int, data: bytes) -> None:
    """The order, then EOF. A job that died before reading it just loses it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)
