"""The artifact store behind two calls: list one attempt's output, open one of its files.

`LocalArtifacts` is the store as a directory (`FLEET_ARTIFACTS`: a local folder, or one shared
by the nodes, bind-mounted at the same path in docker workers). An attempt's output folder is
the job's to write: it may plant links there (to the reader's own files, or out of the store)
or swap a file for one while a download runs. So below the store's root every folder and file
is opened with O_NOFOLLOW, relative to its parent's descriptor: a link is never followed, only
listed as skipped, and so are FIFOs, sockets and devices.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from fleet.entrypoints import is_job_id
from fleet.errors import FleetError
from fleet.observe.logs import attempt_dir

OUTPUT_NAME = "output"
MAX_DEPTH = 64  # folders deeper than this are listed as skipped: a job may nest without end
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block


def output_dir(artifacts: Path, job_id: str, attempt: int) -> Path:
    """One attempt's output folder (`ctx.output_dir`): `jobs/<job>/attempt-<n>/output`."""
    return attempt_dir(artifacts, job_id, attempt) / OUTPUT_NAME


@dataclass(frozen=True)
class Artifact:
    name: str  # relative to the attempt's output folder, '/'-separated
    size: int  # bytes, when listed


@dataclass(frozen=True)
class Listing:
    """An attempt's output: its regular files (by name), and what was left out (links,
    FIFOs, sockets, devices), by name too."""

    files: list[Artifact] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class ArtifactStore(Protocol):
    """What a download needs of a store. `where` names it in messages."""

    where: str

    def listing(self, job_id: str, attempt: int) -> Listing:
        """The attempt's output; empty when it wrote none. FleetError when the store holds
        nothing of the attempt (it never ran here, or this machine cannot reach the store)."""
        ...

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO:
        """One listed file, for reading. FleetError when it is gone or no longer a file."""
        ...


class LocalArtifacts:
    """The store as a directory tree (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.where = str(self.root)

    def listing(self, job_id: str, attempt: int) -> Listing:
        folder = self._attempt_fd(job_id, attempt)
        try:
            try:
                out = os.open(OUTPUT_NAME, _DIR_FLAGS, dir_fd=folder)
            except FileNotFoundError:
                return Listing()
            except OSError as exc:  # a link (the job swapped its folder for one): refused
                raise self._error(exc, output_dir(self.root, job_id, attempt)) from None
            listing = Listing()
            try:
                for name, size in _walk(out, "", listing.skipped):
                    listing.files.append(Artifact(name, size))
            except OSError as exc:
                raise self._error(exc, output_dir(self.root, job_id, attempt)) from None
            finally:
                os.close(out)
            return listing
        finally:
            os.close(folder)

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO:
        parts = [OUTPUT_NAME, *name.split("/")]
        fd = self._attempt_fd(job_id, attempt)
        path = output_dir(self.root, job_id, attempt) / name
        try:
            for part in parts[:-1]:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise self._error(exc, path) from None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            raise FleetError(f"{path} is no longer a regular file: not copied")
        os.set_blocking(file_fd, True)
        return os.fdopen(file_fd, "rb")

    def _attempt_fd(self, job_id: str, attempt: int) -> int:
        """A descriptor of the attempt's folder, opened without following a link below the
        store's root (the root itself may be a link the operator made)."""
        if not is_job_id(job_id) or attempt < 1:
            raise FleetError(f"no attempt {attempt} of job {job_id!r} can be in the store")
        folder = attempt_dir(self.root, job_id, attempt)
        try:
            fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise self._error(exc, self.root) from None
        try:
            for part in folder.relative_to(self.root).parts:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except FileNotFoundError:
            os.close(fd)
            raise FleetError(
                f"attempt {attempt} of job {job_id} is not in the artifact store at {self.where}"
                f" (FLEET_ARTIFACTS): is it the fleet's, shared with its nodes?") from None
        except OSError as exc:
            os.close(fd)
            raise self._error(exc, folder) from None
        return fd

    def _error(self, exc: OSError, path: Path) -> FleetError:
        if isinstance(exc, FileNotFoundError) and path == self.root:
            return FleetError(f"no artifact store at {path} (FLEET_ARTIFACTS) on this machine")
        if isinstance(exc, PermissionError):
            return FleetError(f"cannot read {path}: permission denied (the artifact store's "
                              f"files belong to the user the nodes run as)")
        if _is_link_or_not_dir(exc):
            return FleetError(f"{path} is a link or not a folder: not followed")
        return FleetError(f"cannot read {path}: {exc.strerror or exc}")


def _is_link_or_not_dir(exc: OSError) -> bool:
    """What O_NOFOLLOW (ELOOP) or O_DIRECTORY (ENOTDIR) says of a link or a file."""
    import errno

    return exc.errno in (errno.ELOOP, errno.ENOTDIR)


def _walk(fd: int, prefix: str, skipped: list[str], depth: int = 1) -> Iterator[tuple[str, int]]:
    """(name, size) of every regular file under the folder `fd`, sorted by name, no link
    followed; what is neither file nor folder, or nested past MAX_DEPTH, goes to `skipped`."""
    with os.scandir(fd) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        if entry.is_dir(follow_symlinks=False) and depth >= MAX_DEPTH:
            skipped.append(name + "/")
        elif entry.is_dir(follow_symlinks=False):
            try:
                inner = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if not _is_link_or_not_dir(exc):  # swapped for a link meanwhile: skipped
                    raise
                skipped.append(name)
                continue
            try:
                yield from _walk(inner, name + "/", skipped, depth + 1)
            finally:
                os.close(inner)
        elif entry.is_file(follow_symlinks=False):
            yield name, entry.stat(follow_symlinks=False).st_size
        else:
            skipped.append(name)
