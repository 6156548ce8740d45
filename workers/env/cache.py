"""A node's cache of job envs: `<root>/<key>/`, built once, shared, evicted least recently used.

Two lock files per env, next to it (never inside: they outlive it), taken with flock(2) so that
they hold across the worker processes of every node sharing this disk and vanish with a killed
process:
- `<key>.use`: shared by every job using the env (and by its builder) for as long as it runs;
  eviction takes it exclusive without waiting, so an env in use is never removed;
- `<key>.build`: exclusive while the env is built: a second job needing the same env waits for
  the first one's build instead of building it again.

An env is ready once its marker (`.fleet-env.json`: size, requirements) exists; the marker is
written last, atomically, so a build killed halfway leaves a folder without one, which is never
used: the next builder removes it, and so does eviction. The env is built in place, not renamed
into place, because a virtualenv holds its own absolute path. The marker's mtime is the env's
last use; past the disk budget the least recently used envs go (`policy.to_evict`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from fleet.private import private_dir
from workers.env.build import BuildCancelled, BuildFailed, site_packages
from workers.env.policy import Kept, to_evict

MARKER = ".fleet-env.json"
KEY = re.compile(r"[0-9a-f]{32}")
WAIT_POLL_S = 0.1
CANCEL_EVERY_S = 0.5


class Lease:
    """An env held for one job: not evicted until `release` (or this process's death)."""

    def __init__(self, fd: int, path: Path, built: bool, waited: bool) -> None:
        self._fd: int | None = fd
        self.path = path
        self.site = site_packages(path)
        self.built = built  # this job built it
        self.waited = waited  # it was not ready when asked for (built here or by another job)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # and the shared lock with it


class EnvCache:
    """The envs under `root`, kept within `budget` bytes (the one in use excepted)."""

    def __init__(self, root: Path, budget: int, tighten: Sequence[Path] = ()) -> None:
        self.root = private_dir(root, tighten=list(tighten))
        self.budget = budget

    def acquire(
        self, key: str, build: Callable[[Path], None], *, waiting: Callable[[], None],
        wait_s: float, cancelled: Callable[[], bool],
    ) -> Lease:
        """Hold env `key` for use, building it first with `build(folder)` when it is not ready,
        once across every process (`waiting()` is called first then). BuildFailed or
        BuildCancelled when it could not be had."""
        use = self._lock_file(key, "use")
        try:
            fcntl.flock(use, fcntl.LOCK_SH)  # blocks only while an eviction removes it
            if self._touch(key):
                return Lease(use, self.root / key, built=False, waited=False)
            waiting()
            built = self._build_once(key, build, wait_s, cancelled)
            if not self._touch(key):
                raise BuildFailed(f"env {key} is not ready after its build")
        except BaseException:
            os.close(use)
            raise
        if built:
            self.evict(keep={key})
        return Lease(use, self.root / key, built=built, waited=True)

    def evict(self, keep: Collection[str] = ()) -> list[str]:
        """Remove the least recently used envs past the budget, and what killed builds left;
        an env in use (or being built) stays. Returns the keys removed."""
        kept: list[Kept] = []
        unfinished: list[str] = []
        for path in self.root.iterdir():
            if not (KEY.fullmatch(path.name) and path.is_dir()):
                continue
            try:
                marker = path / MARKER
                size = int(json.loads(marker.read_bytes())["bytes"])
                kept.append(Kept(path.name, size, marker.stat().st_mtime))
            except (OSError, ValueError, KeyError, TypeError):
                unfinished.append(path.name)
        removed = []
        for key in [*to_evict(kept, self.budget, keep), *unfinished]:
            if key not in keep and self._remove_unused(key):
                removed.append(key)
        return removed

    def _build_once(
        self, key: str, build: Callable[[Path], None], wait_s: float,
        cancelled: Callable[[], bool],
    ) -> bool:
        """Build `key` unless another process did while we waited; True when built here."""
        fd = self._lock_file(key, "build")
        try:
            _lock_within(fd, wait_s, cancelled)
            if self._touch(key):
                return False
            target = self.root / key
            shutil.rmtree(target, ignore_errors=True)  # a killed build's leftovers
            try:
                started = time.monotonic()
                build(target)
                self._mark(target, round(time.monotonic() - started, 3))
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            return True
        finally:
            os.close(fd)

    def _mark(self, target: Path, seconds: float) -> None:
        """The marker, last: written aside, synced, renamed into place."""
        size = sum(p.lstat().st_size for p in target.rglob("*"))
        tmp = target / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"bytes": size, "seconds": seconds, "built_at": time.time()}))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target / MARKER)

    def _touch(self, key: str) -> bool:
        """Whether `key` is ready; its last use is now if so."""
        try:
            os.utime(self.root / key / MARKER)
        except FileNotFoundError:
            return False
        return True

    def _remove_unused(self, key: str) -> bool:
        fd = self._lock_file(key, "use")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use, or being built
            (self.root / key / MARKER).unlink(missing_ok=True)  # not ready from here on
            shutil.rmtree(self.root / key, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def _lock_file(self, key: str, kind: str) -> int:
        if not KEY.fullmatch(key):
            raise ValueError(f"not an env key: {key[:40]!r}")
        return os.open(self.root / f"{key}.{kind}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _lock_within(fd: int, wait_s: float, cancelled: Callable[[], bool]) -> None:
    """flock(LOCK_EX) on `fd`, waiting at most `wait_s` s (another job's build) and no longer
    than the job stays wanted."""
    deadline = time.monotonic() + wait_s
    next_check = time.monotonic() + CANCEL_EVERY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise BuildFailed(f"waited {wait_s:g} s for another job's build of the same env")
        if now >= next_check:
            next_check = now + CANCEL_EVERY_S
            if cancelled():
                raise BuildCancelled()
        time.sleep(WAIT_POLL_S)
