"""Before the job's process starts: its checkpoint, from the fleet's store when not on this node.

The next attempt may run on any node. For the job's committed checkpoints, newest first, the
supervisor uses the local folder if it is there and verifies (the same node, or the default
store, which is that folder), else downloads the set from the store into a temporary folder
beside it, verifies it (workers.checkpoint.verify) and renames it into place. A set that is
really not in the store (no manifest, an object missing, a file that does not verify): the
next older one; none at all: the job starts from zero, said in its log and attempt record.

A store that does not answer is not "nothing there": the attempt waits for it with backoff up
to FLEET_RESTORE_WAIT, saying so in its record (`checkpoint_restore`), then ends WORKER_LOST
with a storage reason: not the job's failure, it is placed again. It never starts from zero
while a committed checkpoint may exist.

`CheckpointStorage` is the supervisor's side: the stores it opened (one per URL) and, per
attempt, the restore and the uploader (workers.attempt.uploads) attached to its commits.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.settings import Settings
from fleet.states import EndReason
from fleet.storage import (
    BadKey,
    NotFound,
    Storage,
    StorageDenied,
    StorageError,
    layout,
    open_storage,
)
from fleet.storage.base import check_key
from fleet.storage.manifest import read_set
from fleet.store import keys
from fleet.store.jobstore import JobStore, Outcome
from workers import checkpoint as checkpoints
from workers.attempt.commits import CheckpointCommits, keep_of, restore_order
from workers.attempt.environment import NotPrepared
from workers.attempt.relay import REDIS_DOWN, LogCapture
from workers.attempt.uploads import Backoff, CheckpointUploader, one_line, stamp

log = logging.getLogger("fleet.supervisor")


class RestoreUnavailable(Exception):
    """The store could not be read (within the wait): which checkpoint to resume from is
    unknown."""


class RestoreStopped(Exception):
    """A cancel came while waiting for the store."""


def fetch_set(storage: Storage, prefix: str, target: Path, step: int) -> bool:
    """Download the set at `prefix` into `target` (a temporary folder beside it, renamed once
    it verifies). False when the store holds no complete set there, or it does not verify;
    other storage errors propagate ("cannot tell")."""
    manifest = read_set(storage, prefix)
    if manifest is None:
        return False
    checkpoints.make_private_dir(target.parent)
    tmp = target.parent / f".tmp-restore-{target.name}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=checkpoints.DIR_MODE)
    try:
        for name in manifest["files"]:
            dest = tmp / check_key(name)  # refuses a name that could climb out
            storage.get_file(prefix + name, _private_parent(dest, tmp))
            os.chmod(dest, checkpoints.FILE_MODE)
        if not checkpoints.verify(tmp, step):
            log.warning("checkpoint %s in the store does not verify", prefix)
            return False
        if target.exists() or target.is_symlink():
            aside = target.parent / f".tmp-old-{target.name}-{secrets.token_hex(4)}"
            os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, target)
        return True
    except NotFound:  # gone since its manifest was read (pruned): not there after all
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _private_parent(dest: Path, top: Path) -> Path:
    if dest.parent != top:
        checkpoints.make_private_dir(dest.parent)
    return dest


def restore(
    storage: Storage, job_id: str, root: Path, kept: Sequence[str], wait: float,
    stopped: Callable[[], bool], note: Callable[[str | None], None],
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """The committed name (of `kept`, newest first) the attempt resumes from, now in its
    folder under `root`; None when none is anywhere. RestoreUnavailable past `wait` s of a
    store that does not answer; RestoreStopped when `stopped()` (a cancel) meanwhile."""
    deadline, backoff, since = clock() + wait, Backoff(), 0.0
    for name in kept:
        parsed = checkpoints.parse_committed(name)
        if parsed is None:
            continue
        prefix = layout.checkpoint_prefix(job_id, *parsed)
        while True:
            try:
                if checkpoints.verify(root / name, parsed[1]) or fetch_set(
                        storage, prefix, root / name, parsed[1]):
                    if since:
                        note(None)
                    return name
                log.warning("committed checkpoint %s of %s is not in the store", name, job_id)
                break
            except BadKey as exc:  # a manifest naming what no store holds: not a set
                log.warning("committed checkpoint %s of %s: %s", name, job_id, exc)
                break
            except (StorageError, OSError) as exc:
                why = one_line(exc)
                if isinstance(exc, StorageDenied) or clock() >= deadline:
                    raise RestoreUnavailable(f"{storage.url}: {why}") from None
                since = since or time.time()
                note(f"waiting for the store since {stamp(since)}: {why}")
            if stopped():
                raise RestoreStopped
            sleep(max(0.0, min(backoff.next(), deadline - clock())))
    return None


class CheckpointStorage:
    """The supervisor's stores (one per URL, opened once) and each attempt's use of them."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._open: dict[tuple[Any, ...], Storage] = {}
        self._lock = threading.Lock()

    def storage(self, settings: Settings) -> Storage:
        """The store `settings` name (per attempt: the published URL may change)."""
        key = (settings.storage, settings.s3_endpoint, settings.s3_region,
               settings.s3_credentials_file, settings.artifacts_dir)
        with self._lock:
            if key not in self._open:
                self._open[key] = open_storage(settings)
            return self._open[key]

    def commits(self, job_id: str, attempt: int, node: str, incarnation: str,
                spec: dict[str, Any], artifacts: Path) -> CheckpointCommits:
        """The attempt's commits (on `node` as `incarnation`: the node's, as it claimed the
        attempt), told the job's committed checkpoints (Redis errors propagate: the attempt
        cannot start without them)."""
        committed = self.store.committed_checkpoints(job_id)
        return CheckpointCommits(self.store, job_id, attempt, node, incarnation,
                                 artifacts / "jobs" / job_id / "checkpoints", committed,
                                 keep_of(spec))

    def prepare(self, commits: CheckpointCommits, settings: Settings, log_path: Path,
                cancelled: Callable[[], bool]) -> None:
        """Restore the attempt's checkpoint into its local root and attach its uploader.
        NotPrepared when the attempt must end before its process starts."""
        job_id, attempt = commits.job_id, commits.attempt
        try:
            storage = self.storage(settings)
        except FleetError as exc:  # a published URL this node cannot use
            raise NotPrepared(Outcome(EndReason.WORKER_LOST, f"storage: {exc}")) from None
        note = self._note(job_id, attempt, "checkpoint_restore")
        try:
            chosen = restore(storage, job_id, commits.root, commits.kept, settings.restore_wait,
                             cancelled, note)
        except RestoreUnavailable as exc:
            note(f"gave up after {settings.restore_wait:g}s: {exc}")
            raise NotPrepared(Outcome(
                EndReason.WORKER_LOST, f"could not read the store to restore a checkpoint: {exc}",
            )) from None
        except RestoreStopped:
            raise NotPrepared(Outcome(EndReason.CANCELLED, "cancelled")) from None
        if chosen is None and commits.kept:
            why = (f"no committed checkpoint ({', '.join(commits.kept)}) is in the store "
                   f"{storage.url}: the job starts from zero")
            log.warning("%s attempt %s: %s", job_id, attempt, why)
            note(why)
            self._say(job_id, attempt, log_path, settings, f"[fleet: {why}]\n")
        names = commits.kept[commits.kept.index(chosen):] if chosen else []
        commits.restore = restore_order(commits.root, [{"dir": n} for n in names])
        meta = {"job": job_id, "attempt": attempt, "node": commits.node,
                "incarnation": commits.incarnation}
        commits.uploader = CheckpointUploader(
            storage, commits, meta, lambda: self._current(commits),
            self._note(job_id, attempt, "checkpoint_upload"),
            interval=settings.checkpoint_upload_interval)

    def _current(self, c: CheckpointCommits) -> bool:
        """Whether the attempt is still the job's running attempt here (checkpoint.lua's
        fence, read just before a set's manifest is put)."""
        state, current, node, incarnation = (keys.decode(v) if v is not None else None for v in (
            self.store.r.hmget(keys.job(c.job_id), "state", "attempt", "node", "incarnation")))
        return (state, current, node, incarnation) == (
            "RUNNING", str(c.attempt), c.node, c.incarnation)

    def _note(self, job_id: str, attempt: int, field: str) -> Callable[[str | None], None]:
        def note(text: str | None) -> None:
            try:
                self.store.progress(job_id, attempt, {field: text}, kind="note")
            except REDIS_DOWN:
                pass  # advisory: the attempt goes on
        return note

    def _say(self, job_id: str, attempt: int, path: Path, settings: Settings, text: str) -> None:
        """A line in the job's log (its file and `fleet logs`)."""
        capture = LogCapture(self.store.r, job_id, attempt, path, settings.log_max_bytes)
        try:
            capture.write(text.encode())
            capture.flush()
        finally:
            capture.close()
