"""FLEET_HOME, the artifact store and a job's folders are the owner's only (0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fleet.private import private_dir
from fleet.settings import Settings, write_state


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_folder_made_is_0700_not_only_the_last(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    old = os.umask(0o022)
    try:
        leaf = private_dir(tmp_path / "home" / "artifacts" / "jobs" / "j1" / "attempt-1")
    finally:
        os.umask(old)
    for folder in [leaf, *leaf.parents][:5]:
        assert mode(folder) == 0o700, folder
    assert mode(tmp_path) == 0o755  # a folder it did not make, nor was asked to tighten


def test_a_loose_fleet_home_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    write_state(Settings(home=home), {"redis_url": "redis://x"})
    assert mode(home) == 0o700
    assert mode(home / "state.json") == 0o600
