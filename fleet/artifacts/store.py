"""The artifact store behind two calls: list one attempt's output, open one of its files.

`StorageArtifacts` reads the fleet's store (fleet.storage, `FLEET_STORAGE`): there each node
puts an attempt's output as one set, manifest last (`jobs/<job>/attempt-<n>/output/`,
workers.attempt.outputs), so a download never sees half of one and works from any machine
that reaches the store, whatever became of the node's host. With the default store, the
artifacts folder the nodes write in, there is no set to read: the folder itself is the output,
read as `LocalArtifacts` does.

`LocalArtifacts` is the store as a directory (`FLEET_ARTIFACTS`: a local folder, or one shared
by the nodes, bind-mounted at the same path in docker workers). An attempt's output folder is
the job's to write: it may plant links there (to the reader's own files, or out of the store)
or swap a file for one while a download runs. So below the store's root every folder and file
is opened with O_NOFOLLOW, relative to its parent's descriptor: a link is never followed, only
listed as skipped, and so are FIFOs, sockets and devices.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from fleet.entrypoints import is_job_id
from fleet.errors import FleetError
from fleet.observe.logs import attempt_dir
from fleet.storage import FileStorage, Storage, StorageError, layout
from fleet.storage.base import TEMP_PREFIX
from fleet.storage.manifest import read_set

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


class StorageArtifacts:
    """The fleet's store as the artifact store (see the module's docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.where = storage.url
        # A store that is a folder here is read without following a link, set or no set.
        self.local = LocalArtifacts(storage.root) if isinstance(storage, FileStorage) else None

    def listing(self, job_id: str, attempt: int) -> Listing:
        try:
            found = read_set(self.storage, layout.output_prefix(job_id, attempt))
        except StorageError as exc:
            raise FleetError(f"cannot read the output of {job_id} attempt {attempt} from "
                             f"{self.where}: {exc}") from None
        if found is not None:
            meta = found.get("meta") or {}
            return Listing([Artifact(str(n), int(size)) for n, size in
                            sorted(found["files"].items())],
                           [str(n) for n in meta.get("skipped") or []])
        if self.local is not None:  # the default store: the node's own folder, no set
            return self.local.listing(job_id, attempt)
        raise FleetError(f"the output of {job_id} attempt {attempt} is not in the store at "
                         f"{self.where}: a node puts it there when the attempt ends")

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO:
        if self.local is not None:
            return self.local.open(job_id, attempt, name)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX)
        os.close(fd)
        try:
            self.fetch(job_id, attempt, name, Path(tmp), replace=True)
            return open(tmp, "rb")
        finally:
            os.unlink(tmp)  # the open file outlives its name

    def fetch(self, job_id: str, attempt: int, name: str, target: Path,
              replace: bool = False) -> None:
        """Write the stored file `name` at `target`, a new file (or over it, `replace`)."""
        if self.local is not None:
            with self.local.open(job_id, attempt, name) as src, \
                    target.open("wb" if replace else "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            return
        tmp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}")
        try:
            self.storage.get_file(layout.output_prefix(job_id, attempt) + name, tmp)
            if replace:
                tmp.replace(target)
            else:
                os.link(tmp, target)  # never over a file: fails when the name is taken
        except StorageError as exc:
            raise FleetError(f"cannot download {name} of {job_id} attempt {attempt} from "
                             f"{self.where}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)


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
