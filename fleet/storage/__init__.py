"""One storage for checkpoints, logs, artifacts and bundles: a local directory or S3.

`open_storage(settings)` gives the Storage that FLEET_STORAGE names (fleet.storage.url), with
S3's endpoint, region and credentials from settings or the usual AWS_* variables. The
protocol and its typed errors are in fleet.storage.base; sets committed manifest last in
fleet.storage.manifest.
"""

from __future__ import annotations

from pathlib import Path

from fleet.settings import Settings
from fleet.storage.base import (
    AlreadyExists,
    BadKey,
    NotFound,
    ObjectInfo,
    Storage,
    StorageDenied,
    StorageError,
    StorageFull,
    StorageUnavailable,
)
from fleet.storage.files import FileStorage
from fleet.storage.url import BadStorageURL, FileURL, S3Credentials, parse_credentials, parse_storage_url

__all__ = [
    "AlreadyExists", "BadKey", "BadStorageURL", "FileStorage", "NotFound", "ObjectInfo", "Storage",
    "StorageDenied", "StorageError", "StorageFull", "StorageUnavailable", "open_storage",
    "read_credentials_file",
]


def read_credentials_file(path: Path, field: str = "FLEET_S3_CREDENTIALS_FILE") -> S3Credentials:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadStorageURL(f"{field}: {path}: {exc.strerror}") from None
    return parse_credentials(text, f"{field} {path}")


def open_storage(settings: Settings) -> Storage:
    """The fleet's storage as settings name it (default: the artifact directory)."""
    location = parse_storage_url(settings.storage, settings.artifacts_dir)
    if isinstance(location, FileURL):
        return FileStorage(location.root)
    from fleet.storage.s3 import S3Storage  # boto3 loads only where S3 is used

    creds = None
    if settings.s3_credentials_file is not None:
        creds = read_credentials_file(settings.s3_credentials_file.expanduser())
    return S3Storage(location, endpoint=settings.s3_endpoint, region=settings.s3_region,
                     credentials=creds, ca_file=settings.s3_ca_file)
