"""Checkpoints to the store and back, without Redis: the backoff, the set put manifest last
(and not copied onto itself), the keep-N choice, the uploader's supersede/retry/finish, and
the restore's choice between the local folder, a download, the next older one and a wait.
The store is a real FileStorage over a temporary folder; the job store the in-memory twin."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import SpecError
from fleet.spec import JobSpec, parse_spec
from fleet.states import EndReason
from fleet.storage import (
    FileStorage,
    NotFound,
    StorageError,
    StorageFull,
    StorageUnavailable,
    layout,
)
from fleet.storage.manifest import MANIFEST, read_set
from fleet.store.jobstore import Outcome
from fleet.store.memory import MemoryStore
from workers import checkpoint
from workers.attempt.commits import SUCCESS_WAIT_S, CheckpointCommits, keep_of
from workers.attempt.restore import RestoreStopped, RestoreUnavailable, fetch_set, restore
from workers.attempt.uploads import (
    Backoff,
    CheckpointUploader,
    put_set,
    set_files,
    stale_sets,
    stored_sets,
)

JOB = "train-0123456789ab"


def save(root: Path, step: int, body: str = "w") -> Path:
    return checkpoint.save(root, step, lambda d: (d / "state.txt").write_text(f"{body}{step}"),
                           keep=None)


def test_backoff_doubles_to_its_cap() -> None:
    b = Backoff(0.5, 5.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_keep_checkpoints_from_a_spec() -> None:
    assert JobSpec.model_validate({"name": "a", "entrypoint": "m:f"}).keep_checkpoints == 2
    with pytest.raises(SpecError, match=r"^keep_checkpoints: should be greater than or equal to 1"):
        parse_spec({"name": "a", "entrypoint": "workers.jobs.synthetic:noop",
                    "keep_checkpoints": 0}, allowlist=["workers.jobs"])
    assert [keep_of({"keep_checkpoints": v}) for v in (5, 0, True, "3", None)] == [5, 2, 2, 2, 2]


def test_stale_sets_keep_n_and_never_a_newer_attempt() -> None:
    sets = {(1, 3), (1, 6), (2, 4), (2, 8), (2, 9), (3, 1)}
    kept = ["attempt-2/step-00000008", "attempt-1/step-00000006"]
    # attempt 2 committed step 8: attempt 1's step 3 and attempt 2's step 4 go; step 9 (being
    # uploaded) and attempt 3's stay
    assert stale_sets(sets, kept, 2) == [(1, 3), (2, 4)]
    assert stale_sets(sets, kept[:1], 2) == [(1, 3), (1, 6), (2, 4)]  # keep_checkpoints 1
    assert stale_sets(sets, kept, 1) == []  # kept[0] is not attempt 1's: nothing decided
    keys = [f"jobs/{JOB}/checkpoints/attempt-2/step-00000004/a", f"jobs/{JOB}/checkpoints/"
            "attempt-2/.tmp-step-00000005-ab/x", "jobs/other-0123456789ab/checkpoints/attempt-1/"
            "step-00000001/a", f"jobs/{JOB}/attempt-1/output/x"]
    assert stored_sets(keys, JOB) == {(2, 4)}


def test_put_set_manifest_last_only_while_current(tmp_path: Path) -> None:
    local = save(tmp_path / "local", 3)
    store = FileStorage(tmp_path / "store")
    prefix = layout.checkpoint_prefix(JOB, 1, 3)
    assert not put_set(store, prefix, set_files(local), {"attempt": 1}, lambda: False)
    assert read_set(store, prefix) is None and store.exists(prefix + "state.txt")
    assert put_set(store, prefix, set_files(local), {"attempt": 1}, lambda: True)
    found = read_set(store, prefix)
    assert found is not None and set(found["files"]) == {"state.txt", checkpoint.MANIFEST}
    assert put_set(store, prefix, set_files(local), {"attempt": 1}, lambda: True)  # again


def test_the_default_store_copies_nothing(tmp_path: Path) -> None:
    """The store is the artifact folder: the checkpoint's files are its objects already."""
    store = FileStorage(tmp_path)
    local = save(tmp_path / "jobs" / JOB / "checkpoints" / "attempt-1", 2)
    inode = (local / "state.txt").stat().st_ino
    assert put_set(store, layout.checkpoint_prefix(JOB, 1, 2), set_files(local), {}, lambda: True)
    assert (local / "state.txt").stat().st_ino == inode and (local / MANIFEST).is_file()
    assert checkpoint.verify(local, 2)
    assert set(set_files(local)) == {"state.txt", checkpoint.MANIFEST}


# -- the uploader, with the in-memory job store ------------------------------------------------------
class Flaky(FileStorage):
    """A real FileStorage whose puts fail while `down` is set (a store that does not answer)."""

    def __init__(self, root: Path, error: type[StorageError] = StorageUnavailable) -> None:
        super().__init__(root)
        self.down = threading.Event()
        self.error = error

    def put_file(self, key: str, path: Path) -> None:
        if self.down.is_set():
            raise self.error(f"put {key!r}: store down or full", key)
        super().put_file(key, path)


def claimed_job(store: Any) -> str:
    """A job whose attempt 1 node n1 (incarnation a) has claimed, in `store`."""
    store.heartbeat({"node": "n1", "incarnation": "a",
                     "capacity": {"cpus": 2, "memory": 2**30, "gpus": 0}}, ttl=60)
    job_id = str(store.submit(JobSpec.model_validate({
        "name": "c", "entrypoint": "workers.jobs.synthetic:noop",
        "resources": {"cpus": 1, "memory": "1Gi"}})))
    store.reserve(job_id, "n1", "a", {})
    assert store.claim(job_id, 1, "n1", "a") == (True, "ok")
    return job_id


@pytest.fixture
def running() -> Iterator[tuple[MemoryStore, str]]:
    store = MemoryStore()
    job_id = claimed_job(store)
    yield store, job_id


def uploader(store: MemoryStore, job_id: str, root: Path, storage: FileStorage, keep: int = 2,
             notes: list[Any] | None = None) -> CheckpointCommits:
    commits = CheckpointCommits(store, job_id, 1, "n1", "a", root, [], keep)  # type: ignore[arg-type]
    record = notes.append if notes is not None else (lambda _: None)
    commits.uploader = CheckpointUploader(
        storage, commits, {"job": job_id, "attempt": 1}, lambda: store.get(job_id)["state"] == "RUNNING",
        record, backoff=lambda: Backoff(0.05, 0.1))
    return commits


def test_upload_then_commit_keeping_n(running: tuple[MemoryStore, str], tmp_path: Path) -> None:
    store, job_id = running
    storage = FileStorage(tmp_path / "store")
    commits = uploader(store, job_id, tmp_path / "ck", storage, keep=2)
    for step in (1, 2, 3):
        save(commits.folder, step)
        commits.announce(step)
        assert commits.finish(Outcome(EndReason.CANCELLED), 10).extra is None
    assert store.committed_checkpoints(job_id)[0]["dir"] == "attempt-1/step-00000003"
    assert stored_sets((o.key for o in storage.list()), job_id) == {(1, 2), (1, 3)}
    assert read_set(storage, layout.checkpoint_prefix(job_id, 1, 3))["meta"] == {  # type: ignore[index]
        "job": job_id, "attempt": 1, "step": 3}
    assert sorted(p.name for p in commits.folder.iterdir()) == ["step-00000002", "step-00000003"]


def test_the_default_store_commits_at_once(running: tuple[MemoryStore, str], tmp_path: Path,
                                          ) -> None:
    """The store is the artifact folder: the commit is made in `announce`, as without a store,
    before the progress reported after it."""
    store, job_id = running
    commits = uploader(store, job_id, tmp_path / "jobs" / job_id / "checkpoints",
                       FileStorage(tmp_path))
    for step in (1, 2, 3):
        save(commits.folder, step)
        commits.announce(step)
        assert store.committed_checkpoints(job_id)[0]["step"] == step
    assert commits.uploader is not None and commits.uploader._thread is None
    assert sorted(p.name for p in commits.folder.iterdir()) == ["step-00000002", "step-00000003"]
    assert (commits.folder / "step-00000003" / MANIFEST).is_file()


def test_uploads_start_at_most_once_per_interval_the_last_at_the_end(
        running: tuple[MemoryStore, str], tmp_path: Path) -> None:
    """However often a job checkpoints, the uploads it costs are bounded: the newest step at
    each interval, and the last one at the attempt's end at once."""
    store, job_id = running
    storage = FileStorage(tmp_path / "store")
    commits = uploader(store, job_id, tmp_path / "ck", storage)
    assert commits.uploader is not None
    commits.uploader.interval = 3600.0  # none but the first within this test, till the end
    save(commits.folder, 1)
    commits.announce(1)
    eventually_true(lambda: bool(store.committed_checkpoints(job_id)))
    for step in (2, 3, 4):
        save(commits.folder, step)
        commits.announce(step)  # each supersedes the one waiting: its folder goes
    assert commits.finish(Outcome(EndReason.CANCELLED), 10).extra is None
    assert stored_sets((o.key for o in storage.list()), job_id) == {(1, 1), (1, 4)}
    assert store.committed_checkpoints(job_id)[0]["dir"] == "attempt-1/step-00000004"
    assert not (commits.folder / "step-00000002").exists()
    assert not (commits.folder / "step-00000003").exists()


def eventually_true(check: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(500):
        if check():
            return
        event.wait(0.01)
    raise AssertionError("not within 5 s")


@pytest.mark.parametrize("error", [StorageUnavailable, StorageFull])
def test_a_store_down_is_retried_noted_then_cleared(
        running: tuple[MemoryStore, str], tmp_path: Path, error: type[StorageError]) -> None:
    store, job_id = running
    storage = Flaky(tmp_path / "store", error)
    notes: list[Any] = []
    commits = uploader(store, job_id, tmp_path / "ck", storage, notes=notes)
    storage.down.set()
    save(commits.folder, 1)
    commits.announce(1)  # returns at once: the job goes on training
    assert commits.uploader is not None
    threading.Event().wait(0.3)
    assert store.committed_checkpoints(job_id) == [] and notes[0].startswith("retrying since ")
    save(commits.folder, 2)
    commits.announce(2)  # supersedes step 1, which is never committed: its folder goes
    storage.down.clear()
    assert commits.finish(Outcome(EndReason.CANCELLED), 10).extra is None
    assert store.committed_checkpoints(job_id)[0]["dir"] == "attempt-1/step-00000002"
    assert not (commits.folder / "step-00000001").exists() and notes[-1] is None


def test_the_end_waits_a_bounded_time_and_says_why(
        running: tuple[MemoryStore, str], tmp_path: Path) -> None:
    store, job_id = running
    storage = Flaky(tmp_path / "store")
    storage.down.set()
    commits = uploader(store, job_id, tmp_path / "ck", storage)
    save(commits.folder, 4)
    commits.announce(4)
    outcome = commits.finish(Outcome(EndReason.CANCELLED, extra={"node": "n1"}), 0.3)
    assert outcome.extra is not None and outcome.extra["node"] == "n1"
    assert outcome.extra["checkpoint_upload"].startswith("step 4 not committed: its upload did not "
                                                         "land within 0.3s (retrying since")
    storage.down.clear()
    threading.Event().wait(0.3)  # the thread gave up: nothing is committed after the end
    assert store.committed_checkpoints(job_id) == []


@pytest.mark.parametrize(("reason", "waited"), [(EndReason.SUCCEEDED, SUCCESS_WAIT_S),
                                                 (EndReason.NODE_LOST, 0.0)])
def test_a_success_or_a_fenced_end_does_not_wait_out_its_last_upload(
        running: tuple[MemoryStore, str], tmp_path: Path, reason: EndReason, waited: float,
) -> None:
    """Nothing resumes from a finished job, and while its outcome waits a lost node would rerun
    it; a superseded or fenced attempt's commit would be refused: the node moves on."""
    store, job_id = running
    storage = Flaky(tmp_path / "store")
    storage.down.set()
    commits = uploader(store, job_id, tmp_path / "ck", storage)
    save(commits.folder, 7)
    commits.announce(7)
    assert commits.uploader is not None
    waits: list[float] = []
    finish = commits.uploader.finish
    commits.uploader.finish = lambda wait: waits.append(wait) or finish(wait)  # type: ignore[method-assign]
    outcome = commits.finish(Outcome(reason), 30)
    assert waits == [waited]
    assert outcome.extra is not None and "step 7 not committed" in outcome.extra["checkpoint_upload"]


def test_a_superseded_attempt_puts_no_manifest(
        running: tuple[MemoryStore, str], tmp_path: Path) -> None:
    store, job_id = running
    storage = FileStorage(tmp_path / "store")
    commits = uploader(store, job_id, tmp_path / "ck", storage)
    store.finish(job_id, 1, "n1", Outcome(EndReason.NODE_LOST, error="node n1 lost"))
    save(commits.folder, 5)
    commits.announce(5)
    commits.finish(Outcome(EndReason.CANCELLED), 10)
    assert read_set(storage, layout.checkpoint_prefix(job_id, 1, 5)) is None
    assert commits.pending == 5 and not commits.flush()  # the relay learns it is superseded


# -- restore ----------------------------------------------------------------------------------
def upload(storage: FileStorage, local: Path, attempt: int, step: int) -> None:
    assert put_set(storage, layout.checkpoint_prefix(JOB, attempt, step), set_files(local),
                   {"attempt": attempt}, lambda: True)


def test_restore_prefers_local_then_downloads_then_older(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    elsewhere = tmp_path / "other-node"
    upload(storage, save(elsewhere / "attempt-1", 3), 1, 3)
    upload(storage, save(elsewhere / "attempt-2", 6), 2, 6)
    kept = ["attempt-2/step-00000006", "attempt-1/step-00000003"]
    root = tmp_path / "ck"
    notes: list[Any] = []
    assert restore(storage, JOB, root, kept, 5, lambda: False, notes.append) == kept[0]
    assert checkpoint.verify(root / kept[0], 6) and notes == []
    assert [p.name for p in (root / "attempt-2").iterdir()] == ["step-00000006"]  # no temp left
    (root / kept[0] / "state.txt").write_text("torn")  # local copy corrupt: downloaded again
    assert restore(storage, JOB, root, kept, 5, lambda: False, notes.append) == kept[0]
    assert (root / kept[0] / "state.txt").read_text() == "w6"
    storage.delete(layout.checkpoint_prefix(JOB, 2, 6) + "state.txt")  # incomplete in the store
    (root / kept[0] / "state.txt").unlink()
    assert restore(storage, JOB, root, kept, 5, lambda: False, notes.append) == kept[1]
    storage.delete_prefix(layout.checkpoints_prefix(JOB))
    assert restore(storage, JOB, tmp_path / "empty", kept, 5, lambda: False, notes.append) is None


class Down(FileStorage):
    def get_bytes(self, key: str) -> bytes:
        raise StorageUnavailable(f"get {key!r}: connection refused", key)


def test_restore_waits_for_a_store_that_does_not_answer(tmp_path: Path) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    notes: list[Any] = []
    kept = ["attempt-1/step-00000003"]
    with pytest.raises(RestoreUnavailable, match="connection refused"):
        restore(Down(tmp_path), JOB, tmp_path / "ck", kept, 12, lambda: False, notes.append,
                sleep, lambda: now[0])
    assert slept[:4] == [0.5, 1.0, 2.0, 4.0] and sum(slept) == 12
    assert notes[0].startswith("waiting for the store since ")
    with pytest.raises(RestoreStopped):
        restore(Down(tmp_path), JOB, tmp_path / "ck", kept, 12, lambda: True, notes.append,
                sleep, lambda: now[0])


def test_fetch_refuses_a_manifest_naming_a_path_out(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    prefix = layout.checkpoint_prefix(JOB, 1, 1)
    storage.put_bytes(prefix + "x", b"1")
    storage.put_bytes(prefix + MANIFEST, json.dumps(
        {"version": 1, "files": {"../../../../evil": 1, "x": 1}, "meta": {}}).encode())
    assert not fetch_set(storage, prefix, tmp_path / "ck" / "attempt-1" / "step-00000001", 1)
    assert not (tmp_path / "evil").exists()


def test_a_note_sets_and_clears_an_attempt_field(store: Any) -> None:
    """progress.lua's `note` kind (and the in-memory twin's): what `checkpoint_upload` uses."""
    job_id = claimed_job(store)
    assert store.progress(job_id, 1, {"checkpoint_upload": "retrying since x: down"}, kind="note")
    assert store.attempts(job_id)[0]["checkpoint_upload"] == "retrying since x: down"
    assert store.progress(job_id, 1, {"checkpoint_upload": None}, kind="note")
    assert store.attempts(job_id)[0]["checkpoint_upload"] is None
    assert not store.progress(job_id, 2, {"checkpoint_upload": "x"}, kind="note")  # not current


class Pruned(FileStorage):
    """A set deleted between reading its manifest and downloading its objects."""

    def get_file(self, key: str, path: Path) -> None:
        raise NotFound(f"get {key!r}: no such object", key)


def test_a_set_pruned_during_its_download_is_not_there(tmp_path: Path) -> None:
    storage = Pruned(tmp_path / "store")
    upload(storage, save(tmp_path / "other" / "attempt-1", 3), 1, 3)
    target = tmp_path / "ck" / "attempt-1" / "step-00000003"
    assert not fetch_set(storage, layout.checkpoint_prefix(JOB, 1, 3), target, 3)
    assert list((tmp_path / "ck" / "attempt-1").iterdir()) == []
