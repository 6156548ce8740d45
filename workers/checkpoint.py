"""Atomic, verifiable checkpoints on a local filesystem.

Layout under a job's checkpoint root::

    root/step-00000012/            one complete checkpoint (whatever the job wrote)
    root/step-00000012/manifest.json   {"schema_version": 1, "step": 12, "files": {name: sha256}}
    root/.tmp-step-00000013-ab12cd/    a save in progress (never read)

Guarantees:

- `save` is atomic: the job writes into a temporary directory, every file is checksummed and
  fsynced, and only then is the directory renamed to `step-<N>`. A crash at any point leaves
  either the old set of checkpoints or the new one, never a half-written `step-<N>` that
  `latest` would trust.
- `latest` returns the newest checkpoint whose manifest verifies; a corrupt, partial or
  tampered one is skipped, and the one before it is used.
- Nothing outside `root` is ever read or written: symlinks are refused (on save) and skipped
  (on load), and manifest names may not climb out of their directory.
- The last `KEEP` checkpoints are kept; older ones are removed after a successful save
  (`keep=None`: none is removed here; under a supervisor, what is kept follows what was
  committed, see `prune_committed`).
- Private: directories 0700, files 0600, whatever the job's umask.

Under a node's supervisor each attempt saves under its own folder of the job's checkpoint
root (`attempt-<N>/step-<S>`) and the supervisor commits one with the attempt's fencing token
(`JobStore.commit_checkpoint`): a superseded attempt's folder is never resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

KEEP = 2
STALE_TMP_SECONDS = 600.0  # a save in progress older than this was left by a dead attempt
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1  # of a checkpoint's manifest.json
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")
_COMMITTED = re.compile(r"^attempt-(\d+)/step-(\d{8,})$")
DIR_MODE = 0o700
FILE_MODE = 0o600
_TMP_PREFIX = ".tmp-"


class CheckpointError(Exception):
    """A checkpoint could not be written (bad step, a symlink, a name escaping its root)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def attempt_dir_name(attempt: int) -> str:
    return f"attempt-{attempt}"


def committed_name(attempt: int, step: int) -> str:
    """A committed checkpoint's name, relative to the job's checkpoint root."""
    return f"{attempt_dir_name(attempt)}/{step_dir_name(step)}"


def parse_committed(name: str) -> tuple[int, int] | None:
    """(attempt, step) of a committed name, or None when it is not one (read from Redis: a
    name that could climb out of the root is refused)."""
    match = _COMMITTED.fullmatch(name) if isinstance(name, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def make_private_dir(path: Path) -> None:
    """mkdir -p, each directory made here 0700."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)


def save(
    root: Path, step: int, write: Callable[[Path], None], *, keep: int | None = KEEP
) -> Path:
    """Run `write(tmpdir)`, seal what it wrote with a manifest, and publish it as `step-<N>`.

    Saving a step that already exists replaces it (a retried attempt may redo a step).
    Returns the final directory.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint step must be a non-negative int, got {step!r}")
    root = Path(root)
    make_private_dir(root)
    root = root.resolve()
    tmp = root / f"{_TMP_PREFIX}{step_dir_name(step)}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=DIR_MODE)
    try:
        write(tmp)
        files = {name: _sha256(path) for name, path in _walk(tmp)}
        for _, path in _walk(tmp):
            os.chmod(path, FILE_MODE)
        for directory in _dirs(tmp):
            os.chmod(directory, DIR_MODE)
        files.pop(MANIFEST, None)  # the job may not forge its own manifest
        manifest = {"schema_version": MANIFEST_VERSION, "step": step, "files": files}
        _write_synced(tmp / MANIFEST, json.dumps(manifest, sort_keys=True).encode())
        for _, path in _walk(tmp):
            _fsync_file(path)
        for directory in _dirs(tmp):
            _fsync_dir(directory)
        final = root / step_dir_name(step)
        if final.is_symlink() or final.exists():
            # Move the old one aside first: rename onto a non-empty directory fails.
            stale = root / f"{_TMP_PREFIX}old-{step_dir_name(step)}-{secrets.token_hex(4)}"
            os.rename(final, stale)
            _remove(stale)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        _remove(tmp)
        raise
    if keep is not None:
        _prune(root, keep)
    return final


def latest(root: Path) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies, as (step, directory), or None."""
    for step, directory in reversed(list_steps(root)):
        if verify(directory, step):
            return step, directory
    return None


def list_steps(root: Path) -> list[tuple[int, Path]]:
    """Published checkpoint directories (verified or not), oldest first. No symlinks."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and not entry.is_symlink() and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def verify(directory: Path, step: int | None = None) -> bool:
    """True when `directory`'s manifest parses, names `step`, and every file checks out."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            return False
        if step is not None and manifest.get("step") != step:
            return False
        base = directory.resolve()
        for name, digest in manifest["files"].items():
            if not isinstance(name, str) or not _contained(base, name):
                return False
            path = base / name
            if path.is_symlink() or not path.is_file():
                return False
            if _sha256(path) != digest:
                return False
        return True
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _contained(base: Path, name: str) -> bool:
    """`name` (from a manifest) stays inside `base`: relative, no `..`, no symlink hop out."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return False
    try:
        (base / relative).resolve().relative_to(base)
    except ValueError:
        return False
    return True


def _walk(directory: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of every regular file; refuses symlinks and odd files."""
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in sorted(dirnames):
            if Path(dirpath, name).is_symlink():
                raise CheckpointError(f"checkpoint may not contain a symlink: {name}")
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                raise CheckpointError(f"checkpoint may hold only regular files: {name}")
            yield path.relative_to(directory).as_posix(), path


def _dirs(directory: Path) -> Iterator[Path]:
    for dirpath, _, _ in os.walk(directory, followlinks=False):
        yield Path(dirpath)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
        _fsync_file(path)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints that verify, anything older, and the
    temporary directories that crashed attempts left behind."""
    now = time.time()
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime > STALE_TMP_SECONDS:
                    _remove(entry)
    steps = list_steps(root)
    valid = [step for step, directory in steps if verify(directory, step)]
    if len(valid) <= keep:
        return
    oldest_kept = valid[-keep]
    for step, directory in steps:
        if step < oldest_kept:
            _remove(directory)


def prune_committed(root: Path, attempt: int, kept: Sequence[str]) -> None:
    """After attempt `attempt` committed: remove what can no longer be resumed from.

    `kept` are the committed names (newest first; the newest is `attempt`'s). Removed: older
    attempts' folders (their checkpoints that are still kept excepted) and, in `attempt`'s
    own folder, the steps before its newest committed one. Newer attempts' folders and
    `attempt`'s later steps (written, not committed yet) are never touched.
    """
    keep = {Path(root, name) for name in kept if parse_committed(name)}
    newest = parse_committed(kept[0]) if kept else None
    if newest is None or newest[0] != attempt:
        return
    for entry in _list(Path(root)):
        match = _ATTEMPT_DIR.match(entry.name)
        if match is None or entry.is_symlink() or int(match.group(1)) > attempt:
            continue
        mine = int(match.group(1)) == attempt
        if not mine and not any(k.parent == entry for k in keep):
            _remove(entry)
            continue
        for child in _list(entry):
            step = _STEP_DIR.match(child.name)
            if child in keep:
                continue
            if step is not None and (not mine or int(step.group(1)) < newest[1]):
                _remove(child)
            elif not mine and child.name.startswith(_TMP_PREFIX):
                _remove(child)  # a save a superseded attempt never finished


def remove_uncommitted(root: Path, attempt: int, step: int) -> None:
    """Remove a checkpoint of `attempt` that will never be committed (a newer one came)."""
    _remove(Path(root, committed_name(attempt, step)))


def _list(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []
