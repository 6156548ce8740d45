"""A bundle job's code on this node: fetched from the store once, verified, unpacked read-only.

`code_root(spec, ...)` is the folder the job process puts first on `sys.path`, or None for a job
of installed code. The node's cache (`<artifacts>/bundles/<hex>/`, private) is keyed by digest
and holds only what `workers.bundle_cache.unpack` verified, so a bundle it holds is not fetched
again. A bundle that is missing from the store, does not match its digest or is unsafe raises
`BundleRejected`: the supervisor ends the attempt REJECTED, final, and runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from fleet.private import private_dir
from fleet.settings import Settings
from fleet.store import keys
from workers.bundle_cache import BundleRejected, lookup, unpack

CACHE = "bundles"


def code_root(spec: Mapping[str, Any], r: redis.Redis, settings: Settings) -> Path | None:
    """The unpacked bundle `spec` names (None when it names none); BundleRejected if unusable."""
    digest = spec.get("bundle")
    if not digest:
        return None
    if not settings.code_bundles:
        raise BundleRejected("this node runs no code bundles (FLEET_CODE_BUNDLES=off)")
    root = private_dir(settings.artifacts_dir / CACHE, tighten=[settings.artifacts_dir])
    found = lookup(str(digest), root)  # a malformed digest is refused here
    if found is not None:
        return found
    try:
        data: Any = r.get(keys.bundle(str(digest).removeprefix("sha256:")))
    except redis.exceptions.ResponseError as exc:  # written over with another type
        raise BundleRejected(f"bundle {digest} is unreadable in the fleet's store: {exc}") from None
    if data is None:
        raise BundleRejected(f"bundle {digest} is not in the fleet's store")
    return unpack(bytes(data), str(digest), root, settings.bundle_cap)
