"""Artifacts out: which attempt's output a download takes, the store read without following a
link, and a download that writes all of it into a new folder or nothing."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleet.artifacts import (
    Artifact,
    Listing,
    LocalArtifacts,
    choose_attempt,
    download,
    member_path,
    output_dir,
)
from fleet.artifacts.store import MAX_DEPTH
from fleet.cli import context
from fleet.cli.main import app
from fleet.client import Client
from fleet.errors import FleetError, NotFound
from fleet.settings import Settings
from fleet.spec import JobSpec
from fleet.states import EndReason
from fleet.store.jobstore import Outcome
from fleet.store.memory import MemoryStore


# -- choosing the attempt (pure) -------------------------------------------------------------
def job(state: str, attempt: int, reason: str | None = None) -> dict[str, Any]:
    terminal = state in ("SUCCEEDED", "FAILED", "CANCELLED")
    return {"id": "j-1", "state": state, "attempt": attempt, "terminal": terminal,
            "reason": reason}


def ran(n: int, end: str | None = None) -> dict[str, Any]:
    return {"attempt": n, "started_at": 100.0 + n, "end_reason": end}


def test_a_succeeded_job_gives_the_attempt_that_succeeded() -> None:
    attempts = [ran(1, "ERROR"), ran(2, "NODE_LOST"), ran(3, "SUCCEEDED")]
    assert choose_attempt(job("SUCCEEDED", 3), attempts).attempt == 3
    assert choose_attempt(job("SUCCEEDED", 3), attempts).note is None
    # the record of attempts unreadable: the job's current attempt is the one that won
    assert choose_attempt(job("SUCCEEDED", 2), []).attempt == 2


def test_a_job_not_succeeded_gives_its_latest_attempt_that_ran_with_a_note() -> None:
    failed = choose_attempt(job("FAILED", 2, "ERROR"), [ran(1, "ERROR"), ran(2, "ERROR")])
    assert failed.attempt == 2
    assert failed.note == ("job j-1 is FAILED (ERROR), not SUCCEEDED: the output of attempt 2, "
                           "the latest")
    running = choose_attempt(job("RUNNING", 2), [ran(1, "OOM"), ran(2)])
    assert running.attempt == 2 and running.note is not None and "still running" in running.note
    # placed again, not started yet: the attempt before it is the latest that ran
    waiting = choose_attempt(job("PLACED", 3), [ran(1, "ERROR"), ran(2, "NODE_LOST"),
                                                {"attempt": 3, "started_at": None}])
    assert waiting.attempt == 2 and "PLACED" in str(waiting.note)


def test_a_job_that_never_ran_or_an_attempt_it_never_had_is_refused_in_one_line() -> None:
    with pytest.raises(FleetError, match="has not run yet \\(PENDING\\)"):
        choose_attempt(job("PENDING", 0), [])
    with pytest.raises(FleetError, match="has not run yet \\(CANCELLED\\)"):
        choose_attempt(job("CANCELLED", 1), [{"attempt": 1, "end_reason": "CANCELLED"}])
    with pytest.raises(NotFound, match="job j-1 has no attempt 3 \\(it is at attempt 2\\)"):
        choose_attempt(job("SUCCEEDED", 2), [], wanted=3)
    asked = choose_attempt(job("SUCCEEDED", 2), [ran(1, "ERROR"), ran(2, "SUCCEEDED")], wanted=1)
    assert (asked.attempt, asked.note) == (1, None)


# -- names (pure) ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "/etc/passwd", "..", "../x", "a/../../x", "a//b", "./a",
                                  "a/.", "a\0b", "a/"])
def test_a_name_that_could_leave_the_destination_is_refused(name: str) -> None:
    with pytest.raises(FleetError, match="refused, it could be written outside"):
        member_path(Path("/dl"), name)


def test_a_plain_relative_name_lands_under_the_destination() -> None:
    assert member_path(Path("dl"), "model.pt") == Path("dl/model.pt")
    assert member_path(Path("dl"), "sub/dir/w.bin") == Path("dl/sub/dir/w.bin")
    assert member_path(Path("dl"), "..hidden/x..y") == Path("dl/..hidden/x..y")


@given(st.text(alphabet="ab./\\\0", max_size=12))
def test_whatever_the_name_it_is_refused_or_stays_under_the_destination(name: str) -> None:
    dest = Path("/dl")
    try:
        path = member_path(dest, name)
    except FleetError:
        return
    assert os.path.normpath(path) == str(path) and path.is_relative_to(dest) and path != dest


# -- the store as a directory ----------------------------------------------------------------
def write_output(root: Path, job_id: str, attempt: int, files: dict[str, bytes]) -> Path:
    out = output_dir(root, job_id, attempt)
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_store_lists_regular_files_and_never_follows_a_link(tmp_path: Path) -> None:
    root, secret = tmp_path / "store", tmp_path / "secret.txt"
    secret.write_text("the reader's own file")
    out = write_output(root, "j-1", 1, {"model.pt": b"w" * 10, "sub/b.txt": b"b"})
    (out / "leak").symlink_to(secret)
    (out / "leakdir").symlink_to(tmp_path)
    os.mkfifo(out / "pipe")
    listing = LocalArtifacts(root).listing("j-1", 1)
    assert listing.files == [Artifact("model.pt", 10), Artifact("sub/b.txt", 1)]
    assert listing.skipped == ["leak", "leakdir", "pipe"]

    store = LocalArtifacts(root)
    with store.open("j-1", 1, "sub/b.txt") as f:
        assert f.read() == b"b"
    for name in ("leak", "leakdir/secret.txt", "pipe"):  # swapped in after a listing
        with pytest.raises(FleetError, match="not followed|not a regular file|no longer"):
            store.open("j-1", 1, name).close()


def test_folders_nested_past_the_cap_are_skipped_not_walked(tmp_path: Path) -> None:
    root = tmp_path / "store"
    deep = "/".join(["d"] * (MAX_DEPTH + 3))
    write_output(root, "j-1", 1, {f"{deep}/x": b"x", "top": b"t"})
    listing = LocalArtifacts(root).listing("j-1", 1)
    assert listing.files == [Artifact("top", 1)]
    assert listing.skipped == ["/".join(["d"] * MAX_DEPTH) + "/"]


def test_an_output_folder_or_job_folder_swapped_for_a_link_is_not_followed(
        tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    write_output(tmp_path, "other", 1, {"x": b"x"})
    elsewhere.mkdir()
    (elsewhere / "secret").write_text("s")
    out = write_output(root, "j-1", 1, {})
    out.rmdir()
    out.symlink_to(elsewhere)
    with pytest.raises(FleetError, match="is a link or not a folder: not followed"):
        LocalArtifacts(root).listing("j-1", 1)
    (root / "jobs" / "j-2").symlink_to(tmp_path / "jobs" / "other")
    with pytest.raises(FleetError, match="is a link or not a folder: not followed"):
        LocalArtifacts(root).listing("j-2", 1)


def test_an_attempt_missing_from_the_store_says_where_the_store_was_looked_for(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(FleetError, match="no artifact store at"):
        LocalArtifacts(root).listing("j-1", 1)
    write_output(root, "j-1", 1, {})
    assert LocalArtifacts(root).listing("j-1", 1) == Listing()
    output_dir(root, "j-1", 1).rmdir()
    assert LocalArtifacts(root).listing("j-1", 1) == Listing()  # began, wrote nothing
    with pytest.raises(FleetError, match="attempt 2 of job j-1 is not in the artifact store"):
        LocalArtifacts(root).listing("j-1", 2)
    with pytest.raises(FleetError, match="can be in the store"):
        LocalArtifacts(root).listing("../j-1", 1)


# -- the download ----------------------------------------------------------------------------
class FakeStore:
    """A store that serves what the test says, names and failures included."""

    where = "fake"

    def __init__(self, files: dict[str, bytes], fail: str | None = None) -> None:
        self.files, self.fail = files, fail

    def listing(self, job_id: str, attempt: int) -> Listing:
        return Listing([Artifact(n, len(d)) for n, d in self.files.items()])

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO:
        if name == self.fail:
            raise FleetError(f"{name} is no longer a regular file: not copied")
        return io.BytesIO(self.files[name])


def fetch(store: FakeStore, dest: Path) -> list[Path]:
    return download(store, "j-1", 1, store.listing("j-1", 1).files, dest)


def test_a_download_writes_every_file_into_a_new_folder(tmp_path: Path) -> None:
    dest = tmp_path / "deep" / "new"
    store = FakeStore({"model.pt": b"\x00\x01" * 1000, "logs/eval.json": b"{}"})
    assert fetch(store, dest) == [dest / "model.pt", dest / "logs" / "eval.json"]
    assert (dest / "model.pt").read_bytes() == b"\x00\x01" * 1000
    assert stat.S_IMODE((dest / "model.pt").stat().st_mode) == 0o666 & ~_umask()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fetch(store, empty) == [empty / "model.pt", empty / "logs" / "eval.json"]


def test_a_download_into_a_folder_that_holds_anything_is_refused_untouched(
        tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(FleetError, match="exists and is not empty: download into a new folder"):
        fetch(FakeStore({"mine.txt": b"theirs"}), dest)
    assert os.listdir(dest) == ["mine.txt"] and (dest / "mine.txt").read_text() == "keep"
    with pytest.raises(FleetError, match="exists and is not a folder"):
        fetch(FakeStore({"a": b"a"}), dest / "mine.txt")


def test_a_hostile_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    with pytest.raises(FleetError, match="'../escape' has an empty, '.' or '..' part"):
        fetch(FakeStore({"ok.txt": b"ok", "../escape": b"x"}), dest)
    assert not dest.exists() and not (tmp_path / "escape").exists()


def test_a_download_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    store = FakeStore({"a.bin": b"a", "sub/b.bin": b"b", "c.bin": b"c"}, fail="c.bin")
    with pytest.raises(FleetError, match="c.bin is no longer a regular file"):
        fetch(store, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetError):
        fetch(store, tmp_path / "empty")
    assert os.listdir(tmp_path / "empty") == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- through the Client and the command line, over the in-memory store -----------------------
SPEC = JobSpec(name="j", entrypoint="workers.jobs.synthetic:noop", max_retries=2,
               resources={"cpus": 1, "memory": "100Mi"})


def attempt(store: MemoryStore, job_id: str, root: Path, files: dict[str, bytes],
            end: EndReason | None) -> int:
    """One attempt placed, started, writing `files` to its output, ended with `end`."""
    n, why = store.reserve(job_id, "n1", "i1", {})
    assert n > 0, why
    assert store.claim(job_id, n, "n1", "i1") == (True, "ok")
    write_output(root, job_id, n, files)
    if end is not None:
        assert store.finish(job_id, n, "n1", Outcome(end, error="x"))[0]
    return n


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Client:
    store = MemoryStore()
    store.heartbeat({"node": "n1", "incarnation": "i1",
                     "capacity": {"cpus": 2.0, "memory": 2**30}}, ttl=600)
    c = Client(Settings(home=tmp_path / "home"), store=store)
    monkeypatch.setattr(context, "client_factory", lambda: c)
    return c


def test_the_client_downloads_the_winning_attempts_output_only(
        client: Client, tmp_path: Path) -> None:
    store, root = client.store, client.settings.artifacts_dir
    assert isinstance(store, MemoryStore)
    job_id = store.submit(SPEC)
    attempt(store, job_id, root, {"model.pt": b"first", "only-first.txt": b"1"}, EndReason.ERROR)
    attempt(store, job_id, root, {"model.pt": b"winner", "sub/w.txt": b"2"}, EndReason.SUCCEEDED)
    done = client.artifacts(job_id, tmp_path / "dl")
    assert (done.attempt, done.note, done.size) == (2, None, 7)
    assert done.paths == [tmp_path / "dl" / "model.pt", tmp_path / "dl" / "sub" / "w.txt"]
    assert (tmp_path / "dl" / "model.pt").read_bytes() == b"winner"
    first = client.artifacts(job_id, tmp_path / "first", attempt=1)
    assert sorted(p.name for p in first.paths) == ["model.pt", "only-first.txt"]

    ran = CliRunner().invoke(app, ["artifacts", job_id, "-o", str(tmp_path / "cli")])
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == f"{tmp_path / 'cli'}: 2 files (7B) of {job_id}, attempt 2\n"
    assert (tmp_path / "cli" / "sub" / "w.txt").read_bytes() == b"2"


def test_the_default_destination_is_a_folder_named_after_the_job(
        client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.store
    assert isinstance(store, MemoryStore)
    job_id = store.submit(SPEC)
    attempt(store, job_id, client.settings.artifacts_dir, {"m": b"m"}, EndReason.SUCCEEDED)
    monkeypatch.chdir(tmp_path)
    assert client.artifacts(job_id).paths == [Path(job_id) / "m"]
    assert (tmp_path / job_id / "m").read_bytes() == b"m"


def test_a_failed_or_empty_or_unknown_job_says_so_in_one_line(
        client: Client, tmp_path: Path) -> None:
    store, root = client.store, client.settings.artifacts_dir
    assert isinstance(store, MemoryStore)
    failed = store.submit(SPEC.model_copy(update={"max_retries": 0}))
    attempt(store, failed, root, {"partial.pt": b"p"}, EndReason.ERROR)
    ran = CliRunner().invoke(app, ["artifacts", failed, "-o", str(tmp_path / "f")])
    assert ran.exit_code == 0, ran.output
    assert f"note: job {failed} is FAILED (ERROR), not SUCCEEDED" in ran.stderr
    assert (tmp_path / "f" / "partial.pt").read_bytes() == b"p"

    empty = store.submit(SPEC)
    attempt(store, empty, root, {}, EndReason.SUCCEEDED)
    with pytest.raises(FleetError, match=f"job {empty} attempt 1 wrote no output .*"
                                         "ctx.output_dir"):
        client.artifacts(empty, tmp_path / "e")
    assert not (tmp_path / "e").exists()
    missing = CliRunner().invoke(app, ["artifacts", "no-such-job"])
    assert isinstance(missing.exception, NotFound) and "no job 'no-such-job'" in str(
        missing.exception)
