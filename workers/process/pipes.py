"""A job process's output and event pipes, and its exit, watched in one poll by its supervisor.

The supervisor's thread blocks here until the job writes something, exits, or the next tick is
due; nothing polls on a timer. Events are parsed here; output is kept as raw bytes cut at the
last complete line (the log file takes them as they are, only the tail is split into lines for
Redis); relaying waits for the supervisor.

After a read the pipes rest (only the job's exit is watched meanwhile), for as long as the
output pipe takes to fill halfway at the rate it was just filling, between `MIN_GAP_S` and
`READ_GAP_S` (the shortest after a read that found the pipe full). A training loop that
reports and checkpoints hundreds of times a second (a few KB/s) gets the long rest, so it does
not wake the supervisor as often on the job's own core (that cost the job ~1.2% of its time);
a job printing tens of MiB/s gets short rests and 1 MiB reads, so it never waits on a full pipe
for long (0.2 s after each 64 KiB read held such a job to 0.32 MiB/s). What
the job writes meanwhile waits in the kernel's pipe buffer, so nothing is lost even when the job
is SIGKILLed (its pipes are drained after it ends).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import time
from typing import Any

from workers.process.forkclient import JobProcess

READ_GAP_S = 0.2  # the longest rest after a read: a job writing a little, often
MIN_GAP_S = 0.001  # the shortest: output flowing as fast as the job can write it
PIPE_BYTES = 1 << 20  # the output pipe's capacity asked for (Linux's pipe-max-size default)
LINE_MAX = 1 << 20  # a longer "line" (no newline yet) is passed on as it is
BACKLOG_MAX = 64 << 20  # output read and not taken: past this the job waits on its pipe


class JobPipes:
    """The pipes and exit of one job process; `take()` hands over what was read."""

    def __init__(self, proc: JobProcess) -> None:
        self.proc = proc
        self._events: list[dict[str, Any]] = []
        self._output = bytearray()  # complete lines of output not taken yet
        self._partial: dict[int, bytes] = {proc.events: b"", proc.output: b""}
        self._poll = select.poll()
        for fd in self._partial:
            os.set_blocking(fd, False)
            self._poll.register(fd, select.POLLIN)
        self._capacity = _grow_pipe(proc.output)
        self._status: int | None = proc.status.fileno()
        self._poll.register(self._status, select.POLLIN)
        self._exit_only = select.poll()  # what a resting wait watches
        self._exit_only.register(self._status, select.POLLIN)
        self._rest_until = 0.0
        self._last_read = time.monotonic()
        self._held = False  # output not read while the backlog is full (none is dropped)

    @property
    def backlog(self) -> int:
        """Bytes of output read and not taken yet."""
        return len(self._output)

    def wait(self, timeout: float) -> int | None:
        """Read what comes within `timeout` seconds; the job's return code once it exited."""
        rest = self._rest_until - time.monotonic()
        if rest > 0 and self._status is not None:
            if self._exit_only.poll(max(0, int(min(rest, timeout) * 1000 + 0.999))):
                self._poll_once(0)  # it exited: read everything ready, as below
            return self.proc.returncode
        self._poll_once(timeout)
        return self.proc.returncode

    def drain(self, timeout: float) -> None:
        """After the job ended: read its pipes to their end, for at most `timeout` seconds
        (and no output past BACKLOG_MAX: what a job printed while being stopped is capped)."""
        deadline = time.monotonic() + timeout
        while (set(self._partial) - ({self.proc.output} if self._held else set())
               and (left := deadline - time.monotonic()) > 0):
            self._poll_once(left)

    def _poll_once(self, timeout: float) -> None:
        got = 0
        for fd, _ in self._poll.poll(max(0, int(timeout * 1000 + 0.999))):
            if fd == self._status:
                self.proc.read_status()
                if self.proc.returncode is not None:
                    self._poll.unregister(fd)
                    self._status = None
            else:
                got += self._read(fd)
        if got:
            now = time.monotonic()
            rate = got / max(now - self._last_read, 1e-6)  # bytes/s since the last read
            self._last_read = now
            # a full pipe held the job up: its rate is unknown, and at least this; no rest
            rest = MIN_GAP_S if got >= self._capacity else self._capacity / 2 / rate
            self._rest_until = now + min(READ_GAP_S, max(MIN_GAP_S, rest))

    def _read(self, fd: int) -> int:
        """Read what one pipe holds; the number of bytes (0 at its end or when none came)."""
        try:
            data = os.read(fd, self._capacity)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            rest = self._partial.pop(fd)
            if rest:
                self._take_lines(fd, rest, b"\n")
            self._poll.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
            return 0
        self._partial[fd] = self._take_lines(fd, self._partial[fd], data)
        if fd == self.proc.output and len(self._output) >= BACKLOG_MAX:
            self._hold(True)  # e.g. while the job is being stopped: nothing spills then
        return len(data)

    def _hold(self, held: bool) -> None:
        if held != self._held and self.proc.output in self._partial:
            self._poll.modify(self.proc.output, 0 if held else select.POLLIN)
            self._held = held

    def _take_lines(self, fd: int, pending: bytes, data: bytes) -> bytes:
        """Takes the complete lines of `pending` (the unfinished line `fd` sent before) and
        `data`; returns what is left of an unfinished line."""
        if fd == self.proc.output:
            cut = data.rfind(b"\n") + 1
            if not cut and len(pending) + len(data) <= LINE_MAX:
                return pending + data
            self._output += pending
            if not cut:  # a line past LINE_MAX: what came of it is passed on as a line
                self._output += data
                self._output += b"\n"
                return b""
            self._output += memoryview(data)[:cut]
            return data[cut:]
        *complete, rest = (pending + data).split(b"\n")
        for raw in complete:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._events.append(event)
        return rest

    def take(self) -> tuple[bytearray, list[dict[str, Any]]]:
        """The output (complete lines, as written) and the events read since the last call."""
        output, events = self._output, self._events
        self._output, self._events = bytearray(), []
        self._hold(False)
        return output, events

    def take_output(self) -> bytearray:
        """The output read since the last call (the events stay for `take`)."""
        output, self._output = self._output, bytearray()
        self._hold(False)
        return output

    def close(self) -> None:
        for fd in self._partial:
            os.close(fd)
        self._partial.clear()
        self.proc.close()


def _grow_pipe(fd: int) -> int:
    """Ask for a pipe of PIPE_BYTES; its capacity (the kernel's default when refused: over
    the user's pipe quota, or an older kernel)."""
    with contextlib.suppress(OSError):
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 1 << 16
