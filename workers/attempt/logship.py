"""An attempt's output, shipped to the fleet's store in chunks as it comes, beside the job.

The local output.log (`workers.attempt.outputlog`) is the buffer: a thread of its own reads the
bytes written since the last chunk and puts them at `layout.log_chunk_key(job, attempt,
offset)`, `offset` being where they start in the attempt's output. A chunk goes every SHIP_S,
or as soon as BATCH_BYTES are waiting; it ends at a line's end when one is in it, so a reader
can use each chunk on its own. The supervisor's thread never waits on the store: it only
writes the file, and the lock it shares with this reader is held to open a file, not to send.

The store unreachable (or full, or refusing): the chunk is kept where it is, on disk, and put
again (same key: a put that did land is overwritten with the same bytes and more) with a
backoff up to MAX_BACKOFF_S; the job is never failed for it. While the store is away the
local log's cap still holds: output the file had to drop before it could be sent leaves a hole
in the offsets, which a reader shows as a cut (fleet.observe.logs.read_chunks).

When the store is the directory the log is written in (the default store: the artifacts
folder, `Storage.local_path` of the log's key is the log itself) there is nothing to send, and
no thread is started.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fleet.storage import Storage, StorageError, layout
from workers.attempt.outputlog import OutputLog, Span

log = logging.getLogger("fleet.supervisor")

SHIP_S = 2.0  # a chunk at least this often while output comes
BATCH_BYTES = 1 << 20  # ... or as soon as this much is waiting
MAX_CHUNK = 8 << 20  # one put, read whole into memory
MAX_BACKOFF_S = 30.0
WAKE_S = 0.5  # how often the thread looks at what is waiting
LINGER_S = 300.0  # after the attempt ended, how long the rest is retried in the background


def same_file(a: Path | None, b: Path) -> bool:
    """Whether `a` is the file (or folder) `b` is, links resolved."""
    if a is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


class LogShipper:
    """Sends one attempt's output.log to the store in chunks. `ship` is one pass (what the
    thread calls, and tests); `start`/`finish` run it beside the job."""

    def __init__(
        self, storage: Storage, job_id: str, attempt: int, path: Path, *,
        every: float = SHIP_S, batch: int = BATCH_BYTES, max_chunk: int = MAX_CHUNK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage, self.job_id, self.attempt, self.path = storage, job_id, attempt, path
        self.every, self.batch, self.max_chunk, self.clock = every, batch, max_chunk, clock
        # The default store keeps the log where it is written: nothing to send.
        self.skip = same_file(storage.local_path(layout.log_key(job_id, attempt)), path)
        self.shipped = 0  # output bytes sent (or cut before they could be): the next key
        self.chunks = 0
        self.error: str | None = None  # the last failure, while it lasts
        self._log: OutputLog | None = None
        self._last = clock()
        self._retry_at = 0.0
        self._backoff = 1.0
        self._final = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def open_log(self, path: Path, max_bytes: int) -> OutputLog:
        """The capture's file (LogCapture opens it with the first output), known to this
        shipper so that it can find bytes across the file's rotations."""
        self._log = OutputLog(path, max_bytes)
        return self._log

    def _locate(self, offset: int) -> Span:
        if self._log is not None:
            return self._log.locate(offset)
        # Before the job's first output: only what came before (its env's build) is there,
        # in output.log as it is, never rotated since.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return Span(offset, fd, offset, max(0, os.fstat(fd).st_size - offset))

    def ship(self, final: bool = False) -> bool:
        """Send what is due now (all that is written, when `final`); whether everything
        written so far is in the store. A failure is kept in `error` and retried later."""
        if self.skip:
            return True
        now = self.clock()
        if now < self._retry_at:
            return False
        while True:
            try:
                span = self._locate(self.shipped)
            except OSError as exc:
                return self._failed(f"cannot read {self.path}: {exc.strerror or exc}")
            try:
                if span.length == 0:
                    self.shipped = span.offset  # a cut, with nothing after it yet
                    return True
                if not final and span.length < self.batch and now - self._last < self.every:
                    return False
                data = os.pread(span.fd, min(span.length, self.max_chunk), span.pos)
            except OSError as exc:
                return self._failed(f"cannot read {self.path}: {exc.strerror or exc}")
            finally:
                os.close(span.fd)
            if not data:  # the file is shorter than its writer says: its disk failed
                return self._failed(f"{self.path}: shorter than written")
            data = _whole_lines(data, final and len(data) == span.length)
            try:
                self.storage.put_bytes(
                    layout.log_chunk_key(self.job_id, self.attempt, span.offset), data)
            except (StorageError, OSError) as exc:  # OSError: a local store's own failure
                return self._failed(str(exc))
            self.shipped, self._last = span.offset + len(data), now
            self.chunks += 1
            if self.error is not None:
                log.info("log of %s attempt %s reaches the store again", self.job_id,
                         self.attempt)
            self.error, self._backoff, self._retry_at = None, 1.0, 0.0

    def _failed(self, why: str) -> bool:
        if self.error is None:
            log.warning("log of %s attempt %s not sent to the store (kept on disk, retried): %s",
                        self.job_id, self.attempt, why)
        self.error = why
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        return False

    # -- beside the job ----------------------------------------------------------------------
    def start(self) -> LogShipper:
        if not self.skip:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"logship-{self.job_id}-{self.attempt}")
            self._thread.start()
        return self

    def finish(self, wait: float) -> bool:
        """The attempt is over: send the rest, waiting up to `wait` s; whether all of it is in
        the store. If not, the thread goes on trying for LINGER_S more, in the background."""
        self._retry_at = 0.0  # one try at once, whatever the backoff
        self._final.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)
            return not self._thread.is_alive()
        return self.skip

    def _run(self) -> None:
        give_up: float | None = None
        while True:
            final = self._final.is_set()
            if final and give_up is None:
                give_up = self.clock() + LINGER_S
            try:
                done = self.ship(final)
            except Exception:  # a bug here must not go unseen, nor take the node down
                log.exception("shipping the log of %s failed", self.job_id)
                done = False
            if final and done:
                return
            if give_up is not None and self.clock() > give_up:
                log.warning("log of %s attempt %s: gave up sending to the store, %d bytes sent "
                            "(the rest is in %s): %s", self.job_id, self.attempt, self.shipped,
                            self.path, self.error)
                return
            self._wake.wait(WAKE_S)
            self._wake.clear()


def _whole_lines(data: bytes, complete: bool) -> bytes:
    """`data` up to its last line's end (all of it when `complete`, or when no line ends)."""
    if complete:
        return data
    cut = data.rfind(b"\n")
    return data[:cut + 1] if cut >= 0 else data
