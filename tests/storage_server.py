"""A real SeaweedFS S3 server for the storage tests, started once per session (never a mock).

Import `s3_server` (and `s3_storage`) into a test module to use them; the server's directory
is a session temp folder, removed with it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from fleet.drivers.s3_server import S3Server
from fleet.storage.s3 import S3Storage


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "s3").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_server: S3Server) -> S3Storage:
    """A fresh prefix of the session's bucket per test: tests never see each other's keys."""
    return s3_server.storage(f"t-{secrets.token_hex(4)}/")
