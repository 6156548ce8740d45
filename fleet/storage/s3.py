"""S3Storage: the Storage protocol over any S3-compatible store, through boto3.

Why boto3 (not s3fs or obstore): it is synchronous, as every caller here is (the node's
uploader is a thread, not an event loop); it is AWS's own, well-kept client that every
S3-compatible server (SeaweedFS, MinIO, Ceph) tests against; and its transfer manager does
multipart uploads and ranged downloads of large files from disk in bounded memory. s3fs adds
fsspec and aiobotocore on top of the same botocore; obstore is fast but young, and its errors
are coarser than the status codes and error codes botocore hands back.

botocore's own retries are off (one attempt per call) and its timeouts short: retrying is the
caller's policy, and a caller must learn within seconds that the store is down
(StorageUnavailable), not after minutes of hidden backoff.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

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
from fleet.storage.url import S3URL, S3Credentials

MiB = 1 << 20
NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
DENIED = {"AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId",
          "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}
FULL = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "507", "EntityTooLarge"}
CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def typed(exc: BaseException, key: str, what: str, where: str) -> StorageError:
    """The storage error a botocore/boto3 exception means. boto3's transfer manager wraps a
    ClientError in S3UploadFailedError (a bare message): the original is its __context__."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (bexc.ClientError, bexc.BotoCoreError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, bexc.NoCredentialsError):
        return StorageDenied(f"{what} {key!r}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY, or FLEET_S3_CREDENTIALS_FILE)", key)
    if isinstance(cause, (bexc.ConnectionError, bexc.HTTPClientError)):
        return StorageUnavailable(f"{what} {key!r}: {where} unreachable: {cause}", key)
    if isinstance(cause, bexc.ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        reason = f"{what} {key!r}: {where}: {code or status} {error.get('Message', '')}".rstrip()
        if code in NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
            return NotFound(reason, key)
        if code == "NoSuchBucket":
            return StorageError(f"{reason} (create the bucket, or fix FLEET_STORAGE)", key)
        if code in DENIED or status == 403:
            return StorageDenied(reason, key)
        if code in FULL or status == 507:
            return StorageFull(reason, key)
        if code in CONFLICT or status == 412:
            return AlreadyExists(reason, key)
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return StorageUnavailable(reason, key)
        return StorageError(reason, key)
    return StorageError(f"{what} {key!r}: {where}: {exc}", key)


class S3Storage:
    """Storage over a bucket, every key under the URL's prefix."""

    def __init__(
        self, location: S3URL, *, endpoint: str | None = None, region: str | None = None,
        credentials: S3Credentials | None = None, connect_timeout: float = 3.0,
        read_timeout: float = 30.0, ca_file: Path | None = None,
    ) -> None:
        self.location = location
        self.endpoint = endpoint
        config = Config(
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"total_max_attempts": 1},
            # A private endpoint (SeaweedFS, MinIO) has no per-bucket DNS names.
            s3={"addressing_style": "path" if endpoint else "auto"},
            # Checksums only where the operation needs them: not every S3-compatible server
            # knows the newer flexible-checksum headers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        keys: dict[str, str] = {}
        if credentials is not None:
            keys = {"aws_access_key_id": credentials.access_key,
                    "aws_secret_access_key": credentials.secret_key}
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        session = boto3.session.Session(**keys)  # else the usual chain: AWS_* env, ~/.aws
        self.client: Any = session.client("s3", endpoint_url=endpoint,
                                          region_name=region or "us-east-1", config=config,
                                          verify=None if ca_file is None else str(ca_file))
        # Multipart above 16 MiB in 16 MiB parts, 4 at a time: at most ~64 MiB buffered.
        self.transfer = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB,
                                       max_concurrency=4, io_chunksize=MiB)

    @property
    def url(self) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.location}{at}"

    def _key(self, key: str) -> str:
        return self.location.prefix + check_key(key)

    def _fail(self, exc: BaseException, key: str, what: str) -> StorageError:
        return typed(exc, key, what, self.endpoint or "S3")

    def local_path(self, key: str) -> Path | None:
        return None

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=self._key(key), Body=data,
                                   **extra)
        except Exception as exc:
            raise self._fail(exc, key, "put") from None

    def put_file(self, key: str, path: Path) -> None:
        if not path.is_file():
            raise StorageError(f"put {key!r}: cannot read {path}: not a file", key)
        try:
            self.client.upload_file(str(path), self.location.bucket, self._key(key),
                                    Config=self.transfer)
        except Exception as exc:
            raise self._fail(exc, key, "put") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.location.bucket, Key=self._key(key))["Body"]
            with body:
                data: bytes = body.read()
            return data
        except Exception as exc:
            raise self._fail(exc, key, "get") from None

    def get_file(self, key: str, path: Path) -> None:
        tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}")
        try:
            self.client.download_file(self.location.bucket, self._key(key), str(tmp),
                                      Config=self.transfer)
            tmp.replace(path)
        except Exception as exc:
            # botocore's timeouts are OSErrors too: only a bare OSError is the local disk's.
            if isinstance(exc, OSError) and not isinstance(exc, bexc.BotoCoreError):
                raise StorageError(f"get {key!r}: cannot write {path}: {exc.strerror}",
                                   key) from None
            raise self._fail(exc, key, "get") from None
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        full = self.location.prefix + prefix
        cut = len(self.location.prefix)
        found: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=full)
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(item["Key"][cut:], int(item["Size"])))
        except Exception as exc:
            raise self._fail(exc, prefix, "list") from None
        # Listed in full before returning: an error mid-listing is raised here, not halfway
        # through the caller's loop.
        return iter(sorted(found, key=lambda o: o.key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            error = self._fail(exc, key, "exists")
            if isinstance(error, NotFound):
                return False
            raise error from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(key))
        except Exception as exc:
            error = self._fail(exc, key, "delete")
            if not isinstance(error, NotFound):
                raise error from None

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            try:
                out = self.client.delete_objects(Bucket=self.location.bucket,
                                                 Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self._fail(exc, prefix, "delete") from None
            if errors := out.get("Errors"):
                first = errors[0]
                raise StorageError(f"delete {first.get('Key')!r}: {first.get('Code')} "
                                   f"{first.get('Message', '')}".rstrip(), prefix)
        return len(keys)

    def ensure_bucket(self) -> None:
        """Create the bucket if it is not there (the embedded server's setup)."""
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
            return
        except Exception as exc:
            error = self._fail(exc, "", "head bucket")
            if not isinstance(error, NotFound) and "NoSuchBucket" not in str(error):
                raise error from None
        try:
            self.client.create_bucket(Bucket=self.location.bucket)
        except Exception as exc:
            error = self._fail(exc, "", "create bucket")
            if "BucketAlreadyOwnedByYou" not in str(error):
                raise error from None
