"""A job process's output and event pipes, and its exit, watched in one poll by its supervisor.

The supervisor's thread blocks here until the job writes something, exits, or the next tick is
due; nothing polls on a timer. Parsing into lines and events is done here, relaying them waits
for the supervisor.

After reading, the pipes rest for `READ_GAP_S` (only the job's exit is watched meanwhile): a
training loop that reports and checkpoints hundreds of times a second would otherwise wake the
supervisor as often, on the job's own core, which cost the job ~1.2% of its time (issue 7).
What the job writes meanwhile waits in the kernel's pipe buffer, so nothing is lost even when
the job is SIGKILLed (its pipes are drained after it ends); a job that writes more than a pipe
buffer (64 KiB) within one gap waits at most that long.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time

from workers.forkserver import JobProcess

READ_GAP_S = 0.2  # after a read, the pipes rest this long


class JobPipes:
    """The pipes and exit of one job process; `take()` hands over what was read."""

    def __init__(self, proc: JobProcess) -> None:
        self.proc = proc
        self._events: list[dict] = []
        self._lines: list[str] = []
        self._partial: dict[int, bytes] = {proc.events: b"", proc.output: b""}
        self._poll = select.poll()
        for fd in self._partial:
            os.set_blocking(fd, False)
            self._poll.register(fd, select.POLLIN)
        self._status: int | None = proc.status.fileno()
        self._poll.register(self._status, select.POLLIN)
        self._exit_only = select.poll()  # what a resting wait watches
        self._exit_only.register(self._status, select.POLLIN)
        self._rest_until = 0.0

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
        """After the job ended: read its pipes to their end, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._partial and (left := deadline - time.monotonic()) > 0:
            self._poll_once(left)

    def _poll_once(self, timeout: float) -> None:
        for fd, _ in self._poll.poll(max(0, int(timeout * 1000 + 0.999))):
            if fd == self._status:
                self.proc.read_status()
                if self.proc.returncode is not None:
                    self._poll.unregister(fd)
                    self._status = None
            else:
                self._read(fd)
                self._rest_until = time.monotonic() + READ_GAP_S

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            rest = self._partial.pop(fd)
            if rest:
                self._lines_of(fd, rest + b"\n")
            self._poll.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        self._partial[fd] = self._lines_of(fd, self._partial[fd] + data)

    def _lines_of(self, fd: int, data: bytes) -> bytes:
        """Takes the complete lines of `data`; returns what is left of an unfinished one."""
        *complete, rest = data.split(b"\n")
        for raw in complete:
            if fd == self.proc.output:
                self._lines.append(raw.decode(errors="replace"))
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._events.append(event)
        return rest

    def take(self) -> tuple[list[str], list[dict]]:
        """The output lines and events read since the last call."""
        lines, events = self._lines, self._events
        self._lines, self._events = [], []
        return lines, events

    def close(self) -> None:
        for fd in self._partial:
            os.close(fd)
        self._partial.clear()
        self.proc.close()
