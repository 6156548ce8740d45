"""An attempt's output.log on the node, kept under a size cap with its tail.

A job may print without end; the node's disk may not fill with it. The log is kept in two
halves: when `output.log` reaches half the cap it becomes `output.log.1` (the older half before
it is dropped) and a new `output.log` starts, its first line saying how much earlier output is
gone: "[fleet: 950 MiB of earlier output cut]". So the newest output, between half the cap and
the cap, is always on disk; `fleet.observe.logs.read_stored` puts the halves back in order.

The file is created 0600 (job output may hold anything the job printed), appended with plain
`os.write` of the bytes the job wrote (no decoding, no per-line work); halves end at a line's
end (a line longer than a half is split).

Another thread may read the output back while it is written (`workers.attempt.logship` sends
it to the store): `locate` says, under a lock a rotation also takes, where a byte of the output
(counted from the attempt's first, notes left out) is on disk now, and opens that half.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

from fleet.observe.logs import cut_note, older_half

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Span(NamedTuple):
    """Output bytes `offset` to `offset + length`, at `pos` of the open file `fd` (the
    caller's to close). `offset` is past the one asked for when the bytes between were cut."""

    offset: int
    fd: int
    pos: int
    length: int


class OutputLog:
    """Appends to `path`, keeping at most about `max_bytes` of it on disk (the newest)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.half = max(1, max_bytes // 2)
        self._fd: int | None = os.open(path, _FLAGS, 0o600)
        self.size = os.fstat(self._fd).st_size  # bytes in the current half
        self.older = 0  # bytes of output in output.log.1
        self.cut = 0  # bytes of output dropped with older halves
        self._note_bytes = 0  # the current half's first line, when it is a note (not output)
        self._older_note = 0  # the same, of output.log.1
        self.lock = threading.Lock()  # a rotation, or a reader locating bytes

    @property
    def end(self) -> int:
        """Bytes of output written so far (kept or cut), notes left out."""
        return self.cut + self.older + self.size - self._note_bytes

    def locate(self, offset: int) -> Span:
        """Where output byte `offset` is now, its half opened: a rotation cannot move it
        between the two. The bytes up to `end` are whole on disk; later ones may be coming."""
        with self.lock:
            offset = max(offset, self.cut)
            start = self.cut + self.older  # of the current half's output
            if offset < start:
                path, pos = older_half(self.path), self._older_note + offset - self.cut
                length = start - offset
            else:
                path, pos = self.path, self._note_bytes + offset - start
                length = max(0, self.end - offset)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return Span(offset, fd, pos, length)

    def write(self, data: bytes | bytearray) -> None:
        """Append `data`; OSError (a full or failing disk) is the caller's to name."""
        view = memoryview(data)
        while view:
            room = self.half - self.size
            if len(view) <= room:
                self._write_all(view)
                return
            if room <= 0:  # a file found bigger than a half
                self._rotate()
                continue
            end = _line_end(view, room)
            if not end and self.size > self._note_bytes:
                self._rotate()  # no line ends in reach: start the next half at this line
                continue
            end = end or max(room, 1)  # one line longer than a half: split
            self._write_all(view[:end])
            view = view[end:]
            self._rotate()

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None, "written after close"
        while view:
            n = os.write(self._fd, view)
            self.size += n
            view = view[n:]

    def _rotate(self) -> None:
        """The current half becomes the older one; the one before it is dropped."""
        with self.lock:
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        assert self._fd is not None, "written after close"
        os.close(self._fd)
        self._fd = None
        self.cut += self.older
        os.replace(self.path, older_half(self.path))
        self.older = self.size - self._note_bytes
        self._older_note = self._note_bytes
        self._fd = os.open(self.path, _FLAGS | os.O_TRUNC, 0o600)
        self.size = 0
        if self.cut:
            self._write_all(memoryview(cut_note(self.cut).encode() + b"\n"))
        self._note_bytes = self.size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line_end(view: memoryview, room: int, reach: int = 1 << 16) -> int:
    """Where to cut `view` to fill at most `room` bytes: after the last newline within the
    last `reach` bytes of that room; 0 when there is none."""
    start = max(0, room - reach)
    newline = bytes(view[start:room]).rfind(b"\n")
    return start + newline + 1 if newline >= 0 else 0
