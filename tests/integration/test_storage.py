"""Storage against the real embedded S3 server (SeaweedFS) and a real directory: the same
behaviour from both, typed errors for wrong credentials and a stopped server, and a restart."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fleet.drivers.s3_server import S3Server
from fleet.errors import FleetError
from fleet.storage import (
    AlreadyExists,
    FileStorage,
    NotFound,
    ObjectInfo,
    Storage,
    StorageDenied,
    StorageUnavailable,
)
from fleet.storage.manifest import MANIFEST, commit_set, read_set
from fleet.storage.s3 import S3Storage
from fleet.storage.url import S3URL, S3Credentials

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")  # type: ignore[no-any-return]


def test_bytes_round_trip_and_overwrite(storage: Storage) -> None:
    storage.put_bytes("a/b/c.txt", b"one")
    assert storage.get_bytes("a/b/c.txt") == b"one"
    storage.put_bytes("a/b/c.txt", b"two")
    assert storage.get_bytes("a/b/c.txt") == b"two"
    assert storage.exists("a/b/c.txt") and not storage.exists("a/b/nope")


def test_missing_object_is_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        storage.get_bytes("no/such")
    with pytest.raises(NotFound):
        storage.get_file("no/such", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    storage.delete("no/such")  # deletes are idempotent


def test_list_sizes_prefix_and_delete(storage: Storage) -> None:
    for key, size in [("x/1", 1), ("x/2", 20), ("x/sub/3", 300), ("xy/4", 4), ("z", 0)]:
        storage.put_bytes(key, b"." * size)
    assert list(storage.list("x/")) == [ObjectInfo("x/1", 1), ObjectInfo("x/2", 20),
                                        ObjectInfo("x/sub/3", 300)]
    assert [o.key for o in storage.list("x")] == ["x/1", "x/2", "x/sub/3", "xy/4"]
    assert len(list(storage.list())) == 5
    storage.delete("x/2")
    assert [o.key for o in storage.list("x/")] == ["x/1", "x/sub/3"]
    assert storage.delete_prefix("x/") == 2
    assert [o.key for o in storage.list()] == ["xy/4", "z"]


def test_if_absent_put_has_one_winner(storage: Storage) -> None:
    storage.put_bytes("m", b"first", if_absent=True)
    with pytest.raises(AlreadyExists):
        storage.put_bytes("m", b"second", if_absent=True)
    assert storage.get_bytes("m") == b"first"


def test_manifest_last_set(storage: Storage, tmp_path: Path) -> None:
    files = {}
    for name in ("model.pt", "optim.pt"):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(1000))
    assert read_set(storage, "ck/000001/") is None
    storage.put_file("ck/000001/model.pt", files["model.pt"])  # an upload cut short
    assert read_set(storage, "ck/000001/") is None
    commit_set(storage, "ck/000002/", files, {"token": 7})
    assert read_set(storage, "ck/000002/")["meta"] == {"token": 7}  # type: ignore[index]
    with pytest.raises(AlreadyExists):  # a superseded writer cannot replace the set
        commit_set(storage, "ck/000002/", files, {"token": 6})
    assert read_set(storage, "ck/000002/")["meta"] == {"token": 7}  # type: ignore[index]
    storage.delete("ck/000002/optim.pt")  # a set missing an object is not trusted
    assert read_set(storage, "ck/000002/") is None
    assert storage.exists(f"ck/000002/{MANIFEST}")


def test_large_file_streams_both_ways(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "big"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(64):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    storage.put_file("big/blob", src)
    assert list(storage.list("big/")) == [ObjectInfo("big/blob", 64 * MiB)]
    out = tmp_path / "back"
    storage.get_file("big/blob", out)
    check = hashlib.sha256()
    with open(out, "rb") as f:
        while block := f.read(MiB):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fleet-tmp-")] == []


def test_wrong_credentials_are_denied(s3_server: S3Server) -> None:
    bad = S3Storage(S3URL(s3_server.bucket, "t/"), endpoint=s3_server.endpoint,
                    credentials=S3Credentials(s3_server.credentials.access_key, "wrong"))  # type: ignore[union-attr]
    with pytest.raises(StorageDenied, match="SignatureDoesNotMatch"):
        bad.put_bytes("k", b"x")
    unknown = S3Storage(S3URL(s3_server.bucket, "t/"), endpoint=s3_server.endpoint,
                        credentials=S3Credentials("NOSUCHKEY", "wrong"))
    with pytest.raises(StorageDenied):
        unknown.get_bytes("k")


def test_no_secret_on_the_servers_command_line_or_environment(s3_server: S3Server) -> None:
    assert s3_server.process is not None and s3_server.credentials is not None
    pid = s3_server.process.pid
    secret = s3_server.credentials.secret_key
    shown = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                           text=True).stdout
    assert "weed" in shown and secret not in shown
    assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    for name in ("credentials", "s3.json"):
        assert (s3_server.directory / name).stat().st_mode & 0o777 == 0o600


def test_stopped_server_is_unavailable_quickly_then_back_after_restart(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "s3").start()
    try:
        store = server.storage("r/")
        store.put_bytes("kept", b"data")
        server.stop()
        small = tmp_path / "small"
        small.write_bytes(b"z")
        for call in (lambda: store.get_bytes("kept"), lambda: store.put_bytes("k", b"x"),
                     lambda: list(store.list()), lambda: store.exists("kept"),
                     lambda: store.put_file("f", small),
                     lambda: store.get_file("kept", tmp_path / "out")):
            began = time.monotonic()
            with pytest.raises(StorageUnavailable):
                call()
            assert time.monotonic() - began < 5
        server.start()
        assert store.get_bytes("kept") == b"data"  # same endpoint, keys and data
        store.put_bytes("after", b"y")
        assert store.get_bytes("after") == b"y"
    finally:
        server.stop()
    assert server.process is None


def test_a_hung_server_times_out_as_unavailable(tmp_path: Path) -> None:
    """A server that accepts connections but never answers (SIGSTOP): the read timeout bounds
    the wait, and the caller learns StorageUnavailable, not a hang."""
    server = S3Server(tmp_path / "s3").start()
    assert server.process is not None
    try:
        store = server.storage("h/", connect_timeout=1.0, read_timeout=2.0)
        store.put_bytes("k", b"v")
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(StorageUnavailable, match="unreachable"):
                store.get_bytes("k")
            assert time.monotonic() - began < 6
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
        assert store.get_bytes("k") == b"v"
    finally:
        server.stop()


def test_a_start_that_fails_leaves_no_server(tmp_path: Path) -> None:
    """The S3 port taken by someone else: weed cannot serve, `start` gives up within its
    timeout with one line, and no weed process is left behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = S3Server(tmp_path / "s3", ports={"s3": taken.getsockname()[1]})
        with pytest.raises(FleetError) as err:
            server.start(timeout=8)
    assert "\n" not in str(err.value) and "address already in use" in str(err.value)
    assert server.process is None
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "s3")], capture_output=True, text=True)
    assert leftover.stdout == ""


def test_open_storage_from_settings_and_the_usual_aws_variables(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's way: FLEET_STORAGE + FLEET_S3_ENDPOINT + the server's credentials file;
    and without the file, boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""
    from fleet.settings import Settings
    from fleet.storage import StorageError, open_storage

    settings = Settings(home=tmp_path, storage=f"s3://{s3_server.bucket}/ops",
                        s3_endpoint=s3_server.endpoint,
                        s3_credentials_file=s3_server.credentials_file)
    open_storage(settings).put_bytes("k", b"via settings")
    assert s3_server.credentials is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.credentials.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.credentials.secret_key)
    from_env = open_storage(settings.model_copy(update={"s3_credentials_file": None}))
    assert from_env.get_bytes("k") == b"via settings"
    missing = open_storage(settings.model_copy(update={"storage": "s3://no-such-bucket/x"}))
    with pytest.raises(StorageError, match="NoSuchBucket.*create the bucket"):
        missing.put_bytes("k", b"x")
