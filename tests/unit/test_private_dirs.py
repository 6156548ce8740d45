"""FLEET_HOME, the artifact store and a job's folders are the owner's only (0700)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from fleet.private import private_dir
from fleet.settings import Settings
from fleet.statefile import write_state


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


def test_a_root_owned_by_another_user_is_left_as_it_is() -> None:
    """The docker driver's artifact store on a non-root host is 1777, the host user's: a
    container's worker (another uid) uses it as it is, and its own folders are 0700."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as two users")
    shared = Path(tempfile.mkdtemp(prefix="fleet-shared-"))  # in /tmp: reachable by anyone
    try:
        os.chmod(shared, 0o1777)
        os.chown(shared, 12345, 12345)
        pid = os.fork()
        if pid == 0:  # the container's user
            try:
                os.setgid(23456)
                os.setuid(23456)
                private_dir(shared / "jobs", tighten=[shared])
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert mode(shared) == 0o1777
        assert mode(shared / "jobs") == 0o700
    finally:
        shutil.rmtree(shared)
