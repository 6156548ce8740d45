"""*Pure*: the storage URL (`FLEET_STORAGE`) and the S3 credentials file, parsed and checked.

`file:///abs/path` is a local directory (default: the fleet's artifact directory, as before);
`s3://bucket/prefix` any S3-compatible store. A bad URL is one line naming FLEET_STORAGE and
the reason; nothing secret may be in the URL (credentials come from the environment or a file),
so it can be printed and published to the nodes as it is.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fleet.errors import FleetError

FIELD = "FLEET_STORAGE"
# S3's bucket naming rules (the common subset: no dots, so path and virtual-host style agree).
BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


class BadStorageURL(FleetError):
    exit_code = 2


@dataclass(frozen=True)
class FileURL:
    """A local directory: objects are files under `root`."""

    root: Path

    def __str__(self) -> str:
        return self.root.as_uri()


@dataclass(frozen=True)
class S3URL:
    """A bucket and a key prefix ('' or ending with '/') every key is put under."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


StorageURL = FileURL | S3URL


def parse_storage_url(text: str | None, default_dir: Path, field: str = FIELD) -> StorageURL:
    """The URL `text` (None or '': `default_dir`), or BadStorageURL saying what is wrong."""
    if not text:
        return FileURL(default_dir.expanduser().resolve())
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadStorageURL(f"{field}: file URL with a host ({parts.netloc!r}); "
                                f"expected file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/") or parts.query or parts.fragment:
            raise BadStorageURL(f"{field}: expected file:///absolute/path, got {text!r}")
        if any(seg == ".." for seg in path.split("/")):
            raise BadStorageURL(f"{field}: '..' in the path {path!r}")
        return FileURL(Path(path))
    if parts.scheme == "s3":
        if "@" in parts.netloc or parts.password is not None:
            raise BadStorageURL(f"{field}: credentials in the URL; put them in AWS_* variables "
                                f"or FLEET_S3_CREDENTIALS_FILE")
        bucket = parts.netloc
        if not BUCKET.fullmatch(bucket):
            raise BadStorageURL(f"{field}: bucket {bucket!r}: expected 3-63 of a-z, 0-9, '-'"
                                f" (s3://bucket/prefix)")
        if parts.query or parts.fragment:
            raise BadStorageURL(f"{field}: no ?query or #fragment in an s3 URL (the endpoint "
                                f"is FLEET_S3_ENDPOINT)")
        prefix = unquote(parts.path).strip("/")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise BadStorageURL(f"{field}: prefix {prefix!r}: empty, '.' or '..' segment")
        return S3URL(bucket, prefix + "/" if prefix else "")
    shown = parts.scheme or "none"
    raise BadStorageURL(f"{field}: scheme {shown!r}: expected file:///path or s3://bucket/prefix")


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never print the secret
        return f"S3Credentials(access_key={self.access_key!r}, secret_key='***')"


def parse_credentials(text: str, source: str, profile: str = "default") -> S3Credentials:
    """An AWS shared-credentials file (INI: `[default]` with aws_access_key_id and
    aws_secret_access_key), the format every S3 tool reads; `source` names it in errors."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise BadStorageURL(f"{source}: not an INI credentials file: "
                            f"{' '.join(str(exc).split())[:120]}") from None
    if not parser.has_section(profile):
        raise BadStorageURL(f"{source}: no [{profile}] section")
    section = parser[profile]
    values = []
    for name in ("aws_access_key_id", "aws_secret_access_key"):
        value = section.get(name, "").strip()
        if not value:
            raise BadStorageURL(f"{source}: [{profile}] has no {name}")
        values.append(value)
    return S3Credentials(*values)


def credentials_text(creds: S3Credentials, profile: str = "default") -> str:
    return (f"[{profile}]\naws_access_key_id = {creds.access_key}\n"
            f"aws_secret_access_key = {creds.secret_key}\n")
