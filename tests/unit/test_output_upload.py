"""An attempt's outputs, put in a store as one set at its end and read back from it: real
files and a real FileStorage over tmp dirs (a store that fails has a file in its folder's
way); links, FIFOs and devices in the job's folder are never read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.artifacts import Artifact, StorageArtifacts, download
from fleet.errors import FleetError
from fleet.settings import Settings
from fleet.storage import FileStorage, layout
from fleet.storage.manifest import MANIFEST, read_set
from workers.attempt.outputs import AttemptFiles, upload_outputs

JOB = "j-1"


def outputs(artifacts: Path, files: dict[str, bytes], attempt: int = 1) -> Path:
    folder = artifacts / "jobs" / JOB / f"attempt-{attempt}" / "output"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "node-artifacts"


@pytest.fixture
def store(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "store")


def test_outputs_go_as_one_set_manifest_last_links_and_fifos_left_out(
        artifacts: Path, store: FileStorage, tmp_path: Path) -> None:
    folder = outputs(artifacts, {"model.pt": b"w" * 1000, "sub/eval.json": b"{}",
                                 MANIFEST: b"the job's own"})
    secret = tmp_path / "secret"
    secret.write_text("not the job's")
    (folder / "leak").symlink_to(secret)
    (folder / "leakdir").symlink_to(tmp_path)
    os.mkfifo(folder / "pipe")
    assert upload_outputs(store, artifacts, JOB, 1, {"node": "n1"}) is None
    found = read_set(store, layout.output_prefix(JOB, 1))
    assert found is not None
    assert found["files"] == {"model.pt": 1000, "sub/eval.json": 2}
    assert found["meta"] == {"node": "n1",
                             "skipped": ["leak", "leakdir", "pipe", MANIFEST]}
    assert store.get_bytes(layout.output_prefix(JOB, 1) + "model.pt") == b"w" * 1000
    assert not any("secret" in o.key or "leak" in o.key for o in store.list())


def test_the_set_reads_back_through_storage_artifacts_as_a_remote_store_would(
        artifacts: Path, store: FileStorage, tmp_path: Path) -> None:
    outputs(artifacts, {"model.pt": b"weights", "sub/b.txt": b"b"})
    assert upload_outputs(store, artifacts, JOB, 1, {}) is None
    for local in (True, False):  # as the folder it is, and through get_file as S3 is read
        reader = StorageArtifacts(store)
        if not local:
            reader.local = None
        listing = reader.listing(JOB, 1)
        assert listing.files == [Artifact("model.pt", 7), Artifact("sub/b.txt", 1)]
        dest = tmp_path / f"dl-{local}"
        assert download(reader, JOB, 1, listing.files, dest) == [dest / "model.pt",
                                                                 dest / "sub" / "b.txt"]
        assert (dest / "model.pt").read_bytes() == b"weights"
        with reader.open(JOB, 1, "sub/b.txt") as f:
            assert f.read() == b"b"
    remote = StorageArtifacts(store)
    remote.local = None
    with pytest.raises(FleetError, match=r"attempt 2 is not in the store at .*when the attempt"):
        remote.listing(JOB, 2)


def test_an_attempt_that_wrote_nothing_is_an_empty_set(artifacts: Path, store: FileStorage) -> None:
    outputs(artifacts, {})
    assert upload_outputs(store, artifacts, JOB, 1, {}) is None
    assert StorageArtifacts(store).listing(JOB, 1).files == []


def test_the_default_store_already_holds_the_outputs_so_nothing_is_copied(
        artifacts: Path) -> None:
    folder = outputs(artifacts, {"model.pt": b"w"})
    assert upload_outputs(FileStorage(artifacts), artifacts, JOB, 1, {}) is None
    assert sorted(os.listdir(folder)) == ["model.pt"]  # no manifest, no copy
    listing = StorageArtifacts(FileStorage(artifacts)).listing(JOB, 1)
    assert listing.files == [Artifact("model.pt", 1)]


class Time:
    """A clock and a sleep that moves it; `then` runs after the n-th sleep."""

    def __init__(self, then: tuple[int, object] | None = None) -> None:
        self.now, self.slept, self.then = 0.0, [], then

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s
        if self.then is not None and len(self.slept) == self.then[0]:
            self.then[1]()  # type: ignore[operator]


def test_an_unreachable_store_is_retried_with_backoff_then_given_up_in_bounded_time(
        artifacts: Path, store: FileStorage) -> None:
    outputs(artifacts, {"a": b"a", "b": b"bb"})
    store.root.write_text("in the way")  # every put fails
    back = Time(then=(3, store.root.unlink))  # the store is back after three tries
    assert upload_outputs(store, artifacts, JOB, 1, {}, 60, back.clock, back.sleep) is None
    assert back.slept == [1.0, 2.0, 4.0]
    assert read_set(store, layout.output_prefix(JOB, 1))["files"] == {"a": 1, "b": 2}  # type: ignore[index]

    outputs(artifacts, {"c": b"c"}, attempt=2)
    store.root.rename(store.root.with_name("kept"))
    store.root.write_text("in the way")
    never = Time()
    why = upload_outputs(store, artifacts, JOB, 2, {}, 10, never.clock, never.sleep)
    assert why is not None and why.startswith("outputs not stored (0 files sent): ")
    assert sum(never.slept) <= 10


def test_a_store_that_cannot_be_opened_fails_nothing_and_is_said(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", storage="s3://bucket/fleet",
                        s3_credentials_file=tmp_path / "missing")
    log_path = tmp_path / "output.log"
    files = AttemptFiles(settings, JOB, 1, log_path)
    files.open_log(log_path, 1 << 20).write(b"still written\n")
    extra = files.finish("n1")
    assert log_path.read_bytes() == b"still written\n"
    assert extra["storage_error"].startswith("store not opened: FLEET_S3_CREDENTIALS_FILE: ")
