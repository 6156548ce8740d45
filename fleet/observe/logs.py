"""A job's captured output, per attempt: read a finished attempt, follow a running job.

The node's supervisor appends each attempt's stdout and stderr lines to a Redis list (the last
`LOG_LINES_CAP` lines) and to `<artifacts>/jobs/<job>/attempt-<n>/output.log` on its host (the
newest `FLEET_LOG_MAX_BYTES` of them, in two halves: `output.log.1` the older, and a note of what
was cut before it), which it sends to the fleet's store in chunks as they come
(`jobs/<job>/attempt-<n>/log/<offset>`, workers.attempt.logship) unless the store is that very
folder (the default). Reads prefer Redis (it is shared by every machine, and current to the
line); when its list is empty or full (lines were dropped from its head: a long log, or an old
attempt), the store holds more and is read instead: the file where the store is this machine's
folder, else the chunks (`read_chunks`: their newest FLEET_LOG_MAX_BYTES, holes said).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import FleetError, NotFound
from fleet.storage import FileStorage, ObjectInfo, Storage, StorageError, layout

if TYPE_CHECKING:
    from fleet.store.protocol import JobReads

LOG_LINES_CAP = 5000  # lines the supervisor keeps in Redis per attempt (the file keeps more)
LOG_NAME = "output.log"
READ_MAX_BYTES = 64 << 20  # of a log in the store, the newest this much is read


@dataclass(frozen=True)
class LogLine:
    attempt: int
    text: str


def attempt_dir(artifacts: Path, job_id: str, attempt: int) -> Path:
    """One attempt's folder in the artifact store: its working directory and its log."""
    return artifacts / "jobs" / job_id / f"attempt-{attempt}"


def log_file(artifacts: Path, job_id: str, attempt: int) -> Path:
    """Where the supervisor writes the full log of one attempt."""
    return attempt_dir(artifacts, job_id, attempt) / LOG_NAME


def older_half(path: Path) -> Path:
    """The older half of a capped log: `output.log.1` beside `output.log`."""
    return path.with_name(path.name + ".1")


_NOTE_HEAD, _NOTE_TAIL = "[fleet: ", " of earlier output cut]"


def cut_note(cut: int) -> str:
    """The line that says how much output was dropped before what a log keeps."""
    mib = cut / 2**20
    return f"{_NOTE_HEAD}{mib:.{0 if mib >= 10 else 1}f} MiB{_NOTE_TAIL}"


def read_stored(path: Path) -> str:
    """A capped log as one text, in order: the cut note (when output was dropped), the older
    half, the newer half. Empty when neither half exists."""
    newer = _read(path)
    older = _read(older_half(path))
    note, newer = _split_note(newer)
    return note + _split_note(older)[1] + newer


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _split_note(text: str) -> tuple[str, str]:
    """(the note line with its newline, or "", the rest)."""
    first, newline, rest = text.partition("\n")
    if newline and first.startswith(_NOTE_HEAD) and first.endswith(_NOTE_TAIL):
        return first + newline, rest
    return "", text


def chunks_to_read(chunks: list[ObjectInfo], max_bytes: int) -> list[tuple[int, ObjectInfo]]:
    """*Pure*: of a listing of one attempt's `log/`, the chunks holding its newest `max_bytes`
    (one at least), with the offset each starts at, in order."""
    at = sorted(((int(c.key.rpartition("/")[2]), c) for c in chunks
                 if c.key.rpartition("/")[2].isdigit()), key=lambda x: x[0])
    first, kept = len(at), 0
    while first > 0 and kept + at[first - 1][1].size <= max_bytes:
        first -= 1
        kept += at[first][1].size
    return at[max(0, min(first, len(at) - 1)):]


def read_chunks(storage: Storage, chunks: list[ObjectInfo], max_bytes: int) -> str:
    """The log the chunks (a listing of one attempt's `log/`) hold, in order: the newest
    `max_bytes` of it, a cut note where output was dropped (before the first chunk read, or a
    hole between two: the node's disk cap while the store was away)."""
    out, pos = bytearray(), 0
    for offset, chunk in chunks_to_read(chunks, max_bytes):
        if offset > pos:
            if out and not out.endswith(b"\n"):
                out += b"\n"
            out += cut_note(offset - pos).encode() + b"\n"
        data = storage.get_bytes(chunk.key)
        out += data[max(0, pos - offset):]
        pos = max(pos, offset + len(data))
    return out.decode(errors="replace")


def stored_log(storage: Storage, job_id: str, attempt: int,
               max_bytes: int = READ_MAX_BYTES) -> str | None:
    """One attempt's log as the store keeps it, None when it keeps none: the node's own file
    where the store is its folder, else the chunks the node sent."""
    local = storage.local_path(layout.log_key(job_id, attempt))
    if local is not None and (local.is_file() or older_half(local).is_file()):
        return read_stored(local)
    chunks = list(storage.list(f"{layout.attempt_prefix(job_id, attempt)}log/"))
    return read_chunks(storage, chunks, max_bytes) if chunks else None


class JobLogs:
    """Reads one job's attempt logs. The store (Redis's or its in-memory twin: the job's record
    and its kept lines) and the fleet's storage (or the artifact folder, as a FileStorage) are
    passed in."""

    def __init__(self, store: JobReads, storage: Storage | Path | Callable[[], Storage],
                 job_id: str, max_bytes: int = READ_MAX_BYTES) -> None:
        self.store = store
        self._storage = FileStorage(storage) if isinstance(storage, Path) else storage
        self.job_id = job_id
        self.max_bytes = max_bytes

    @property
    def storage(self) -> Storage:
        """The store, opened when first needed (most reads need only Redis)."""
        if callable(self._storage):
            self._storage = self._storage()
        return self._storage

    def job_attempt(self) -> tuple[int, bool]:
        """(current attempt number, job is terminal). NotFound for an unknown job."""
        job = self.store.get(self.job_id)
        if job is None:
            raise NotFound(f"no job {self.job_id!r}")
        return int(job.get("attempt") or 0), bool(job.get("terminal"))

    def lines(self, attempt: int) -> list[str]:
        """Every line kept for `attempt`: Redis's, or the store's when Redis dropped some (or
        has none) and the store has more. A store that cannot be read leaves Redis's lines;
        with none of those, FleetError names the store."""
        kept = self.store.log_lines(self.job_id, attempt)
        if kept and len(kept) < LOG_LINES_CAP:
            return kept
        try:
            stored = stored_log(self.storage, self.job_id, attempt, self.max_bytes)
        except StorageError as exc:
            if kept:
                return kept
            raise FleetError(f"log of {self.job_id} attempt {attempt}: the store "
                             f"{self.storage.url} cannot be read: {exc}") from None
        found = [] if stored is None else stored.splitlines()
        return found if len(found) > len(kept) else kept

    def follow(
        self, attempt: int | None = None, *, interval: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[LogLine]:
        """Lines as they arrive, of `attempt` or (None) of every attempt as the job moves on,
        until the job is terminal and its last lines are read.

        An attempt already over when first reached is read whole, as `lines` does (the store
        when Redis has not got its lines: trimmed, or never written from its host). A running
        one is read from the Redis list from the last index seen, so a line is yielded once,
        until the list is full (LOG_LINES_CAP lines: from then on it drops its head, and an
        index no longer names a line): then from the store's chunks, the lines already yielded
        skipped (`ChunkFollower`), a few seconds behind. Where the store is this machine's
        folder (no chunks) the list is read on, and may skip lines: the file keeps them.
        """
        seen: dict[int, int] = {}
        whole: set[int] = set()  # attempts read whole: nothing more can come
        chunked: dict[int, ChunkFollower] = {}
        while True:
            current, terminal = self.job_attempt()
            wanted = [attempt] if attempt is not None else list(range(1, current + 1))
            for n in wanted:
                over = terminal or n < current
                if n in whole:
                    continue
                if n in chunked:
                    yield from (LogLine(n, t) for t in chunked[n].read(final=over))
                    if over:
                        whole.add(n)
                    continue
                if n not in seen and over:
                    whole.add(n)  # over before we came to it: read whole, once
                    for text in self.lines(n):
                        yield LogLine(n, text)
                    continue
                start = seen.get(n, 0)
                new = self.store.log_lines(self.job_id, n, start)
                if start + len(new) >= LOG_LINES_CAP and self._chunked(n):
                    chunked[n] = ChunkFollower(self.storage, self.job_id, n, skip=start)
                    continue  # `new` may be shifted by a trim: the store says from `start` on
                seen[n] = start + len(new)
                for text in new:
                    yield LogLine(n, text)
            if terminal or (attempt is not None and current > attempt):
                return  # the attempt followed is over: no line can come after this read
            sleep(interval)

    def _chunked(self, attempt: int) -> bool:
        """Whether the store keeps `attempt`'s log in chunks (not as this machine's file)."""
        try:
            local = self.storage.local_path(layout.log_key(self.job_id, attempt))
        except FleetError:
            return False
        return local is None or not (local.is_file() or older_half(local).is_file())


class ChunkFollower:
    """One attempt's log followed in the store's chunks, from its first byte: the first `skip`
    lines (already shown from Redis) left out, then each complete line once; a hole (output
    the node's disk dropped before it could send it) is said with a cut note. A store that
    cannot be read now is read again at the next call."""

    def __init__(self, storage: Storage, job_id: str, attempt: int, skip: int) -> None:
        self.storage, self.skip = storage, skip
        self.prefix = f"{layout.attempt_prefix(job_id, attempt)}log/"
        self.pos = 0  # the next byte of the output to read
        self.partial = bytearray()  # the start of a line whose end has not come

    def read(self, final: bool = False) -> Iterator[str]:
        """The new complete lines (and, when `final`, the last one even without its end)."""
        try:
            listing = list(self.storage.list(self.prefix))
        except StorageError:
            return
        for offset, chunk in chunks_to_read(listing, 1 << 62):
            if offset + chunk.size <= self.pos:
                continue
            try:
                data = self.storage.get_bytes(chunk.key)
            except StorageError:
                return  # from this chunk on, at the next call
            if offset > self.pos:  # the line cut short ends here; the note says the rest
                note = cut_note(offset - self.pos).encode()
                yield from self._lines((b"\n" if self.partial else b"") + note + b"\n")
            yield from self._lines(data[max(0, self.pos - offset):])
            self.pos = max(self.pos, offset + len(data))
        if final and self.partial:
            yield from self._lines(b"\n")

    def _lines(self, data: bytes) -> Iterator[str]:
        self.partial += data
        *done, rest = bytes(self.partial).split(b"\n")
        self.partial = bytearray(rest)
        for line in done:
            if self.skip > 0:
                self.skip -= 1
                continue
            yield line.decode(errors="replace")
