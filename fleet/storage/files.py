"""FileStorage: objects as files under one directory (the default `file://` storage).

Every write goes to a temporary file beside its target, is fsynced, then renamed over it (and
the directory fsynced), so a crash leaves the old object or the new one, never a torn file.
`if_absent` links the temporary file to the target instead of renaming: link() fails when the
name exists, which makes the check and the write one atomic step, like S3's If-None-Match.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fleet.storage.base import (
    TEMP_PREFIX,
    AlreadyExists,
    NotFound,
    ObjectInfo,
    StorageDenied,
    StorageError,
    StorageFull,
    StorageUnavailable,
    check_key,
)

CHUNK = 1 << 20
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
UNAVAILABLE = {errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN}


def typed(exc: OSError, key: str, what: str) -> StorageError:
    """The storage error an OSError means, in one line."""
    reason = f"{what} {key!r}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return NotFound(reason, key)
    if exc.errno in FULL:
        return StorageFull(reason, key)
    if exc.errno in DENIED:
        return StorageDenied(reason, key)
    if exc.errno in UNAVAILABLE:
        return StorageUnavailable(reason, key)
    return StorageError(reason, key)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    shutil.copyfileobj(src, dst, CHUNK)


class FileStorage:
    """The Storage protocol over a local (or mounted) directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def _write(self, key: str, fill: BinaryIO | bytes, if_absent: bool) -> None:
        target = self.path(key)
        tmp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                if isinstance(fill, bytes):
                    f.write(fill)
                else:
                    copy_stream(fill, f)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                os.link(tmp, target)  # fails if the name exists: check and write in one step
                tmp.unlink()
            else:
                tmp.replace(target)
            fsync_dir(target.parent)
        except FileExistsError:
            raise AlreadyExists(f"put {key!r}: already exists", key) from None
        except OSError as exc:
            raise typed(exc, key, "put") from None
        finally:
            with contextlib.suppress(OSError):  # a file where a folder should be: said above
                tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._write(key, data, if_absent)

    def put_file(self, key: str, path: Path) -> None:
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise StorageError(f"put {key!r}: cannot read {path}: {exc.strerror}", key) from None
        with src:
            self._write(key, src, False)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except IsADirectoryError:
            raise NotFound(f"get {key!r}: no such object (a folder)", key) from None
        except OSError as exc:
            raise typed(exc, key, "get") from None

    def get_file(self, key: str, path: Path) -> None:
        tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}")
        try:
            with open(self.path(key), "rb") as src, open(tmp, "xb") as dst:
                copy_stream(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.replace(path)
        except IsADirectoryError:
            raise NotFound(f"get {key!r}: no such object (a folder)", key) from None
        except OSError as exc:
            raise typed(exc, key, "get") from None
        finally:
            with contextlib.suppress(OSError):  # a file where a folder should be: said above
                tmp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        # The deepest folder the prefix names fully: only that subtree is walked.
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        found: list[ObjectInfo] = []
        try:
            for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
                dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
                for name in filenames:
                    if name.startswith(TEMP_PREFIX):
                        continue
                    full = Path(dirpath) / name
                    key = full.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        found.append(ObjectInfo(key, full.stat().st_size))
        except FileNotFoundError:
            return iter(())
        except OSError as exc:
            raise typed(exc, prefix, "list") from None
        return iter(sorted(found, key=lambda o: o.key))

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except OSError as exc:
            raise typed(exc, key, "exists") from None

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise typed(exc, key, "delete") from None

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)


def _raise(exc: OSError) -> None:
    raise exc
