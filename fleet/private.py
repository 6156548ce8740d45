"""Directories only their owner can read: FLEET_HOME, the artifact store, a job's folders.

They hold the state file (the Redis password in its URL), job output and checkpoints, which may
hold anything a job printed or saved. `Path.mkdir(parents=True, mode=0o700)` gives the mode to
the last folder only (the parents it creates get 0777 less the umask, 0755 by default), so each
missing folder is made here one by one, and the fleet's own roots are tightened when found
looser (made by hand, or by an older version).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

MODE = 0o700


def private_dir(path: Path, *, tighten: Iterable[Path] = ()) -> Path:
    """Create `path` and its missing parents 0700; each of `tighten` that exists, is ours and
    lets its group or others in is made 0700. Returns `path`."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=MODE)
        except FileExistsError:  # made meanwhile (another job, another process)
            pass
        else:
            os.chmod(folder, MODE)  # whatever the umask
    for root in tighten:
        try:
            mode = stat.S_IMODE(root.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            try:
                os.chmod(root, MODE)
            except PermissionError:  # not ours (the docker driver's shared 1777 store): as is
                pass
    return path
