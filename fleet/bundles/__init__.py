"""Code bundles: a producer's own folder of code, packed into one content-addressed archive.

The client packs (`pack`), the store keeps the bytes under their digest, a node verifies and
unpacks them read-only (`workers/bundle_cache.py`). The digest is the sha256 of a canonical
archive, so the same folder content gives the same digest on any machine, whatever its mtimes,
owners or directory order: a bundle already stored is never sent twice.
"""

from __future__ import annotations

from fleet.bundles.pack import DEFAULT_CAP, DEFAULT_EXCLUDES, IGNORE_FILE, Bundle, BundleError, pack

__all__ = ["DEFAULT_CAP", "DEFAULT_EXCLUDES", "IGNORE_FILE", "Bundle", "BundleError", "pack"]
