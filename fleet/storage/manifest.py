"""The manifest-last convention: how a set of objects (a checkpoint) becomes visible at once.

S3 has no multi-object transaction and no rename, so a set is committed like this:
1. every data object is put under the set's prefix (`<prefix>/<name>`), in any order;
2. then `<prefix>/MANIFEST.json` is put with `if_absent=True`: the names and sizes of the
   objects and the writer's metadata (its attempt and fencing token).
A reader trusts a set only if its manifest exists and every object it lists is there with the
size it gives (`read_set`); anything else under a prefix without a manifest is an unfinished
upload, safe to delete. The conditional put makes the commit a single winner: a second writer
(a superseded attempt racing the new one) gets AlreadyExists and its set is not the one read.
Fencing itself (whether an attempt may commit at all) is the caller's check, made before
step 2 with the token it then records in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleet.storage.base import NotFound, ObjectInfo, Storage, check_key

MANIFEST = "MANIFEST.json"
VERSION = 1


def manifest_bytes(sizes: Mapping[str, int], meta: Mapping[str, Any]) -> bytes:
    """*Pure*: the manifest of a set whose objects have these sizes."""
    return json.dumps({"version": VERSION, "files": dict(sorted(sizes.items())),
                       "meta": dict(meta)}, sort_keys=True).encode()


def check_set(manifest: bytes, listing: Iterable[ObjectInfo], prefix: str) -> dict[str, Any]:
    """*Pure*: the manifest, parsed, if the listing (of `prefix`) holds every object it names
    at its size; ValueError with the first difference otherwise."""
    try:
        data = json.loads(manifest)
        files = data["files"]
        if data.get("version") != VERSION or not isinstance(files, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{prefix}{MANIFEST}: not a version-{VERSION} manifest") from None
    present = {o.key[len(prefix):]: o.size for o in listing if o.key.startswith(prefix)}
    for name, size in files.items():
        if present.get(name) != size:
            got = "missing" if name not in present else f"{present[name]} bytes"
            raise ValueError(f"{prefix}{name}: {got}, manifest says {size} bytes")
    return dict(data)


def commit_set(storage: Storage, prefix: str, files: Mapping[str, Path],
               meta: Mapping[str, Any]) -> None:
    """Put `files` (name -> local path) under `prefix` (ending with '/'), manifest last.
    AlreadyExists: a set was already committed there."""
    check_key(prefix, prefix=True)
    sizes = {}
    for name, path in files.items():
        check_key(name)
        sizes[name] = path.stat().st_size
        storage.put_file(prefix + name, path)
    storage.put_bytes(prefix + MANIFEST, manifest_bytes(sizes, meta), if_absent=True)


def read_set(storage: Storage, prefix: str) -> dict[str, Any] | None:
    """The committed set's manifest, or None when `prefix` holds no complete set. Storage
    errors other than NotFound are raised: "cannot tell" is not "nothing there"."""
    try:
        manifest = storage.get_bytes(prefix + MANIFEST)
    except NotFound:
        return None
    try:
        return check_set(manifest, storage.list(prefix), prefix)
    except ValueError:
        return None
