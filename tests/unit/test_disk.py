"""A node's disk errors are named for what they are: kind, path, the errno's text."""

from __future__ import annotations

import errno
from pathlib import Path

from workers.node import disk


def test_a_disk_error_names_its_kind_path_and_errno_text() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device")
    assert disk.is_disk_error(exc)
    assert disk.describe(exc, "/a/output.log") == "disk full: /a/output.log: No space left on device"
    ro = OSError(errno.EROFS, "Read-only file system", "/a/attempt-1")
    assert disk.describe(ro) == "read-only filesystem: /a/attempt-1: Read-only file system"
    assert not disk.is_disk_error(OSError(errno.ENOENT, "No such file or directory"))
    assert not disk.is_disk_error(ValueError("no"))


def test_a_jobs_error_message_gives_its_disk_errno() -> None:
    assert disk.errno_in("OSError: [Errno 28] No space left on device: '/x'") == errno.ENOSPC
    assert disk.errno_in("OSError: [Errno 2] No such file or directory") is None
    assert disk.errno_in("RuntimeError: boom") is None


def test_a_healthy_disk_probes_clean_and_a_failed_node_recovers_when_it_can_write(
    tmp_path: Path,
) -> None:
    health = disk.DiskHealth(tmp_path / "jobs")
    assert health.recheck() and health.reason is None
    health.fail("disk full: /x: No space left on device")
    assert health.reason == "disk full: /x: No space left on device"
    assert health.recheck()  # this disk can write: healthy again
    assert health.reason is None
    assert list((tmp_path / "jobs").iterdir()) == []  # the probe left nothing
