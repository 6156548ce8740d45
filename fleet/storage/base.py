"""The storage protocol every backend implements, its typed errors, and the key rules.

Checkpoints, logs, artifacts and bundles all go through `Storage`, so a caller never knows
whether the bytes land in a local directory (`FileStorage`) or an S3 bucket (`S3Storage`).
Retrying is the caller's policy (a checkpoint upload retries with backoff beside training, a
restore waits a bounded time), so a backend never retries on its own and every failure is one
of a few types a caller can decide on:

- `StorageUnavailable`: the store did not answer (connection refused, timeout, 5xx): retry.
- `NotFound`: the object is not there: no point retrying.
- `StorageFull`: no space or over quota: retrying helps only after something is deleted.
- `StorageDenied`: wrong or missing credentials, or not allowed: an operator's fix.
- `AlreadyExists`: a conditional put (`if_absent`) found the object there: someone else won.

Keys are relative, `/`-separated paths (`jobs/<id>/checkpoints/000012/model.pt`); `check_key`
refuses what could escape a prefix or mean different things to different backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fleet.errors import FleetError

# FileStorage writes each object to a temporary file of this prefix beside it first: no key
# may use it, so a listing never shows a half-written object.
TEMP_PREFIX = ".fleet-tmp-"
MAX_KEY_BYTES = 1024  # S3's own limit, kept for files too so a key works on both


class StorageError(FleetError):
    """A storage operation failed; `key` is the object concerned ('' when none)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class StorageUnavailable(StorageError):
    """The store did not answer or answered with a server error: a retry may succeed."""


class NotFound(StorageError):
    """No object at that key."""


class StorageFull(StorageError):
    """No space left or a quota reached."""


class StorageDenied(StorageError):
    """Credentials missing, wrong, or not allowed this operation."""


class AlreadyExists(StorageError):
    """A put with `if_absent=True` found the key already there."""


class BadKey(StorageError):
    """A key that is not a clean relative path."""


def check_key(key: str, *, prefix: bool = False) -> str:
    """`key` if it is a clean relative path; BadKey naming the reason otherwise. With `prefix`,
    '' (everything) and a trailing '/' are allowed."""
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key
    if not body:
        raise BadKey("storage key: empty", key)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BadKey(f"storage key: over {MAX_KEY_BYTES} bytes", key)
    if body.startswith("/") or "\\" in body or "\x00" in body:
        raise BadKey(f"storage key {key!r}: must be a relative path with '/' only", key)
    for part in body.split("/"):
        if part in ("", ".", ".."):
            raise BadKey(f"storage key {key!r}: empty, '.' or '..' segment", key)
        if part.startswith(TEMP_PREFIX):
            raise BadKey(f"storage key {key!r}: {TEMP_PREFIX}* is reserved", key)
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its key (relative to the storage's root) and size in bytes."""

    key: str
    size: int


@runtime_checkable
class Storage(Protocol):
    """What checkpoints, logs, artifacts and bundles need from a store.

    Every write is atomic: a reader sees the whole new object or the old one (or none), never
    a part. Sets of objects (a checkpoint) are made consistent by the manifest-last convention
    (fleet.storage.manifest), built on `put_bytes(..., if_absent=True)`.
    """

    @property
    def url(self) -> str:
        """Where this storage points, without any secret (for messages and logs)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The local file that holds `key`, when the store is a directory on this machine
        (None on S3): a file already there needs no upload."""
        ...

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` at `key`. `if_absent`: only if no object is there (atomically; else
        AlreadyExists)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at `path`, streamed (multipart on S3): never read whole into memory."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's content (small objects: manifests, state)."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Write the object to `path`, streamed, atomically (a temporary file renamed)."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""
        ...

    def exists(self, key: str) -> bool:
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is not there (deletes are retried blindly)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix` (a folder: ends with '/'); how many there were."""
        ...
