"""The node's own disk: its I/O errors named for what they are, and the node's health.

A full, over-quota, read-only or failing disk under the node's artifact folder is neither the
job's fault nor a lost worker: the attempt fails with `EndReason.DISK` (counted against
`max_retries`, so a job cannot loop on it), its error names the path and the errno's text
("disk full: /…/output.log: No space left on device"), and the node reports itself unhealthy
(the master places nothing on it) until a probe write succeeds again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from pathlib import Path

from fleet.private import private_dir

log = logging.getLogger("fleet.disk")

KINDS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EIO: "disk I/O error",
}
MIN_FREE_BYTES = 1 << 20  # an attempt does not start with less free under the artifact folder
PROBE_BYTES = 64 << 10  # what the health probe writes (and fsyncs) to call the disk writable
PROBE_NAME = ".fleet-disk-probe"
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in KINDS


def describe(exc: OSError, path: Path | str | None = None) -> str:
    """`disk full: /…/output.log: No space left on device`: kind, path, the errno's text."""
    code = exc.errno or errno.EIO
    where = path if path is not None else exc.filename
    text = os.strerror(code)
    kind = KINDS.get(code, "disk error")
    return f"{kind}: {where}: {text}" if where is not None else f"{kind}: {text}"


def errno_in(text: str) -> int | None:
    """The errno a job's error message names (`OSError: [Errno 28] ...`), if a disk's."""
    found = _ERRNO_TEXT.search(text)
    code = int(found.group(1)) if found else None
    return code if code in KINDS else None


def check_room(directory: Path) -> None:
    """OSError(ENOSPC or EROFS) when `directory`'s filesystem has under MIN_FREE_BYTES free
    for this user, or is mounted read-only: cheap (one statvfs), so it runs before each
    attempt, where a full disk would otherwise surface only once the job writes."""
    st = os.statvfs(directory)
    if st.f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def probe(directory: Path) -> None:
    """Prove `directory` writable: room left, then create, write, fsync and remove a small
    file. Raises the OSError that says why not."""
    private_dir(directory)
    check_room(directory)
    path = directory / PROBE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class DiskHealth:
    """Whether this node can write its artifacts. The supervisor marks it failed when an
    attempt could not start or keep writing; the agent re-probes on each heartbeat while it
    is, and reports it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._reason: str | None = None
        self._lock = threading.Lock()

    @property
    def reason(self) -> str | None:
        """Why the node is unhealthy; None when it is healthy."""
        return self._reason

    def fail(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                log.warning("node unhealthy: %s; taking no work until it can write", reason)
            self._reason = reason

    def recheck(self, always: bool = False) -> bool:
        """Probe again if unhealthy (or `always`: a node starting); True when healthy."""
        if self._reason is None and not always:
            return True
        try:
            probe(self.directory)
        except OSError as exc:
            with self._lock:
                self._reason = describe(exc) if is_disk_error(exc) else f"disk probe failed: {exc}"
            return False
        with self._lock:
            if self._reason is not None:
                log.info("node healthy again: %s is writable", self.directory)
            self._reason = None
        return True
