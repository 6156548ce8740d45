"""An attempt's checkpoints to the fleet's store, beside training, then committed.

The job saves each checkpoint locally (workers.checkpoint) and announces its step; the
supervisor hands the step to this attempt's `CheckpointUploader`, a thread of its own, so the
job never waits on the network. The thread takes the newest announced step (a newer one
supersedes one still waiting, whose local folder is removed: it will never be committed), puts
its files under `fleet.storage.layout.checkpoint_prefix`, checks that the attempt is still the
job's current one, puts the set's manifest last (fleet.storage.manifest), and only then makes
the fenced Redis commit (`CheckpointCommits.commit`). So a checkpoint counts, is in the next
attempt's `restore`, only once it is in the store and committed with the attempt's token; a
superseded attempt never puts a manifest, and its Redis commit would be refused anyway.

A file whose store key is that same file on this machine (the default store: the artifact
folder itself) is not copied: the default costs a manifest write, as before no copy at all.

Uploads start at most once per `interval` (FLEET_CHECKPOINT_UPLOAD_INTERVAL), each the newest
checkpoint then, so what they cost is bounded however often a job checkpoints.
An unreachable or full store is retried with `Backoff`, without end while the job runs; the
attempt's record says so (`checkpoint_upload: "retrying since ...: why"`, cleared once an
upload lands). At the attempt's end `finish` waits a bounded time for the last one.
After each commit, committed checkpoints beyond the job's `keep_checkpoints` are deleted from
the store (and locally, by `CheckpointCommits`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.storage import BadKey, Storage, StorageError, layout
from fleet.storage.base import AlreadyExists
from fleet.storage.manifest import MANIFEST, manifest_bytes
from workers import checkpoint as checkpoints
from workers.attempt.commits import CheckpointCommits
from workers.attempt.relay import REDIS_DOWN

log = logging.getLogger("fleet.supervisor")

FIRST_RETRY_S = 0.5
LAST_RETRY_S = 5.0  # a store back after an outage is used again within this
UPLOAD_NICE = 10  # the uploader thread's nice value, over the supervisor's
_SET = re.compile(r"^attempt-(\d+)/step-(\d{8,})/")
Note = Callable[[str | None], None]  # the attempt record's checkpoint_upload (None clears it)


class Backoff:
    """*Pure*: delays between retries, doubling from `first` up to `most`."""

    def __init__(self, first: float = FIRST_RETRY_S, most: float = LAST_RETRY_S) -> None:
        self.first, self.most = first, most
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        return delay


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def set_files(directory: Path) -> dict[str, Path]:
    """The files of a local checkpoint, by their name in its set (relative, '/'); the store's
    own manifest, if one is there, is not one of them."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise):
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
        for name in filenames:
            path = Path(dirpath, name)
            key = path.relative_to(directory).as_posix()
            if key != MANIFEST and not path.is_symlink():
                found[key] = path
    return dict(sorted(found.items()))


def put_set(storage: Storage, prefix: str, files: Mapping[str, Path], meta: Mapping[str, Any],
            current: Callable[[], bool]) -> bool:
    """Put `files` under `prefix`, then, if `current()` still holds, the manifest last; False
    (no manifest) when it does not. A file the store already holds as that very file (a
    directory store over the same folder) is not copied."""
    sizes = {}
    for name, path in files.items():
        sizes[name] = path.stat().st_size
        if not same_file(storage.local_path(prefix + name), path):
            storage.put_file(prefix + name, path)
    if not current():
        return False
    body = manifest_bytes(sizes, meta)
    try:
        storage.put_bytes(prefix + MANIFEST, body, if_absent=True)
    except AlreadyExists:  # this attempt saved the step again: the new set replaces the old
        storage.delete(prefix + MANIFEST)
        storage.put_bytes(prefix + MANIFEST, body, if_absent=True)
    return True


def same_file(stored: Path | None, local: Path) -> bool:
    try:
        return stored is not None and os.path.samefile(stored, local)
    except OSError:
        return False


def stored_sets(keys: Iterable[str], job_id: str) -> set[tuple[int, int]]:
    """*Pure*: the (attempt, step) of every checkpoint set these store keys belong to (a set
    without its manifest too: an upload cut short)."""
    prefix = layout.checkpoints_prefix(job_id)
    found = set()
    for key in keys:
        match = _SET.match(key[len(prefix):]) if key.startswith(prefix) else None
        if match:
            found.add((int(match.group(1)), int(match.group(2))))
    return found


def stale_sets(sets: Iterable[tuple[int, int]], kept: Sequence[str], attempt: int,
               ) -> list[tuple[int, int]]:
    """*Pure*: the sets to delete once `attempt` committed `kept[0]` (`kept`: the committed
    names to keep, newest first). The rule of `workers.checkpoint.prune_committed`: older
    attempts' sets not kept, and `attempt`'s own steps before its newest; never a newer
    attempt's, nor `attempt`'s later steps (being uploaded)."""
    keep = {p for p in map(checkpoints.parse_committed, kept) if p is not None}
    newest = checkpoints.parse_committed(kept[0]) if kept else None
    if newest is None or newest[0] != attempt:
        return []
    return sorted((a, s) for a, s in sets
                  if (a, s) not in keep and (a < attempt or (a == attempt and s < newest[1])))


class CheckpointUploader:
    """One attempt's uploads: `offer` (the relay's thread) never blocks on the store."""

    def __init__(self, storage: Storage, commits: CheckpointCommits, meta: Mapping[str, Any],
                 current: Callable[[], bool], note: Note,
                 backoff: Callable[[], Backoff] = Backoff, interval: float = 0.0) -> None:
        self.storage, self.commits = storage, commits
        self.backoff = backoff
        # Uploads start at most this often (the newest checkpoint then; the last one at the
        # attempt's end at once): the network and CPU they take stay bounded however often a
        # job checkpoints, for at most this much more work redone after a node is lost.
        self.interval = interval
        self._last_start = -float("inf")
        self.meta = dict(meta)  # job, attempt, node, incarnation: the set's writer
        self.current, self.note = current, note
        self.problem: str | None = None  # why the upload is retrying (the record's note)
        self.lost: str | None = None  # a checkpoint given up on, until a newer one commits
        self.seconds: list[float] = []  # each landed upload's time, put to commit
        self._cond = threading.Condition()
        self._pending: int | None = None
        self._busy: int | None = None
        self._closing = False
        self._gave_up = False
        self._thread: threading.Thread | None = None
        self._since = 0.0  # when the uploads began to fail (0: they do not)
        self._local: bool | None = None  # whether the store is the job's own folder

    def offer(self, step: int) -> None:
        """Upload `step` next; a step still waiting is superseded (and removed locally).
        When the store is this very folder and nothing else is under way, the step is
        committed at once, here: no copy to wait for, and the commit comes before the
        progress reported after it, as without a store."""
        if self._in_place() and self._try_at_once(step):
            return
        with self._cond:
            old, self._pending = self._pending, step
            if old is not None and old != step:
                self._drop(old)
            if self._thread is None:
                self._closing = self._gave_up = False
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"upload-{self.commits.job_id}")
                self._thread.start()
            self._cond.notify_all()

    def _in_place(self) -> bool:
        """The store holds this attempt's checkpoints where the job wrote them (the default
        store: the artifact folder)."""
        if self._local is None:
            c = self.commits
            key = layout.checkpoint_prefix(c.job_id, c.attempt, 0) + MANIFEST
            stored = self.storage.local_path(key)
            self._local = stored is not None and same_file(stored.parent.parent, c.folder)
        return self._local

    def _try_at_once(self, step: int) -> bool:
        """Upload and commit `step` on the caller's thread, once; False (nothing decided)
        when the store or Redis failed or the thread is busy: the thread retries then."""
        with self._cond:
            if self._pending is not None or self._busy is not None:
                return False
        started = time.monotonic()
        try:
            if self._put(step) and self._commit(step):
                self.seconds.append(time.monotonic() - started)
        except BadKey as exc:  # a file name no store can hold: retrying cannot help
            self.lost = f"step {step} not committed: {one_line(exc)}"
        except FileNotFoundError:  # its folder is gone: nothing left to upload
            pass
        except (StorageError, OSError, *REDIS_DOWN):
            return False
        return True

    def finish(self, wait: float) -> str | None:
        """Wait up to `wait` s for what is announced to be committed (a retry sleeping is
        woken at once). Why the last checkpoint was not committed, else None."""
        deadline = time.monotonic() + wait
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending is not None or self._busy is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    step = self._pending if self._pending is not None else self._busy
                    self._pending, self._gave_up = None, True  # the thread stops retrying
                    self._cond.notify_all()
                    self.lost = (f"step {step} not committed: its upload did not land within "
                                 f"{wait:g}s ({self.problem or 'still uploading'})")
                    break
                self._cond.wait(left)
            return self.lost

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        _yield_cpu()
        while True:
            with self._cond:
                while not self._closing:
                    early = self._last_start + self.interval - time.monotonic()
                    if self._pending is not None and early <= 0:
                        break
                    # woken by a newer step (which supersedes the waiting one) or the end
                    self._cond.wait(None if self._pending is None else early)
                if self._pending is None:
                    self._thread = None  # an offer after this starts another
                    return
                step, self._pending, self._busy = self._pending, None, self._pending
                self._last_start = time.monotonic()
            try:
                self._land(step)
            except Exception as exc:  # a bug must not leave finish() waiting on a dead thread
                log.exception("uploading checkpoint %s of %s", step, self.commits.job_id)
                self.lost = f"step {step} not committed: {one_line(exc)}"
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _land(self, step: int) -> None:
        """Upload and commit `step`, retrying with backoff until it lands, a newer step
        supersedes it, or the attempt's end gives up on it."""
        backoff, uploaded = self.backoff(), False
        started = time.monotonic()
        while True:
            try:
                if not uploaded:
                    if not self._put(step):
                        return
                    uploaded = True
                if self._gave_up:  # the attempt's end no longer waits: its outcome says so
                    return
                if self._commit(step):
                    self.seconds.append(time.monotonic() - started)
                return
            except BadKey as exc:
                self.lost = f"step {step} not committed: {one_line(exc)}"
                return
            except FileNotFoundError:
                return
            except (StorageError, OSError, *REDIS_DOWN) as exc:
                self._since = self._since or time.time()
                self._say(f"retrying since {stamp(self._since)}: {one_line(exc)}")
            with self._cond:
                if self._pending is None and not self._gave_up:
                    self._cond.wait(backoff.next())  # woken by a newer step or the end
                if self._gave_up:
                    return
                if self._pending is not None:  # superseded by a newer one
                    self._drop(step)
                    return

    def _put(self, step: int) -> bool:
        """The step's set into the store, manifest last if the attempt is still current."""
        c = self.commits
        prefix = layout.checkpoint_prefix(c.job_id, c.attempt, step)
        files = set_files(c.folder / checkpoints.step_dir_name(step))
        if put_set(self.storage, prefix, files, {**self.meta, "step": step}, self.current):
            return True
        self._refused(step)
        return False

    def _commit(self, step: int) -> bool:
        """The fenced Redis commit, then the store's pruning."""
        if not self.commits.commit(step):
            self._refused(step)
            return False
        self.lost, self._since = None, 0.0
        self._say(None)
        self._prune()
        return True

    def _refused(self, step: int) -> None:
        """Not the job's current attempt: nothing committed; the relay is told (it stops the
        job), and a set put without its manifest is left for the next commit to prune."""
        log.info("checkpoint %s of %s attempt %s not committed: superseded", step,
                 self.commits.job_id, self.commits.attempt)
        self.commits.refused = True
        self.commits.pending = step  # the relay flushes, which reports the refusal

    def _say(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        if problem is not None:
            log.warning("checkpoint upload of %s: %s", self.commits.job_id, problem)
        try:
            self.note(problem)
        except REDIS_DOWN:
            pass  # the note is advisory; the upload is what counts

    def _drop(self, step: int) -> None:
        """A step that will never be committed: its local folder goes (its partial upload,
        if any, goes with the next commit's pruning)."""
        checkpoints.remove_uncommitted(self.commits.root, self.commits.attempt, step)

    def _prune(self) -> None:
        """The store's sets beyond the job's `keep_checkpoints` (rule: `stale_sets`)."""
        c = self.commits
        try:
            keys = (o.key for o in self.storage.list(layout.checkpoints_prefix(c.job_id)))
            for attempt, step in stale_sets(stored_sets(keys, c.job_id), c.kept, c.attempt):
                self.storage.delete_prefix(layout.checkpoint_prefix(c.job_id, attempt, step))
        except StorageError as exc:  # only space: the next commit prunes again
            log.warning("pruning the stored checkpoints of %s: %s", c.job_id, exc)


def _yield_cpu() -> None:
    """Lower this thread's priority (Linux: nice is per thread): where CPUs are short, the
    job's training comes before its upload (measured: the job's loop slowed less)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICE)
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: the upload runs at the supervisor's priority


def _raise(exc: OSError) -> None:
    raise exc
