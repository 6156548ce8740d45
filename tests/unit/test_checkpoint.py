"""Checkpoints: atomic publication, verification, retention, containment; and the JobContext
calls built on them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from workers import checkpoint
from workers.context import Allotment, JobContext


def _writer(payload: str):
    def write(directory: Path) -> None:
        (directory / "state.json").write_text(payload)
        (directory / "sub").mkdir()
        (directory / "sub" / "weights.bin").write_bytes(payload.encode() * 10)

    return write


def _context(tmp_path: Path, **kwargs) -> JobContext:
    return JobContext(
        job_id="job-1",
        attempt=1,
        resources=Allotment(cpus=1, memory=2**30),
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "ckpt",
        **kwargs,
    )


def test_save_publishes_a_sealed_step_directory(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path, 7, _writer("seven"))

    assert path == tmp_path.resolve() / "step-00000007"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7
    assert set(manifest["files"]) == {"state.json", "sub/weights.bin"}
    assert checkpoint.latest(tmp_path) == (7, path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000007"]  # no temp dir left


def test_failed_write_publishes_nothing(tmp_path: Path) -> None:
    def write(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, 1, write)
    assert list(tmp_path.iterdir()) == []
    assert checkpoint.latest(tmp_path) is None


def test_latest_skips_a_corrupt_checkpoint(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, _writer("one"))
    newest = checkpoint.save(tmp_path, 2, _writer("two"))
    (newest / "sub" / "weights.bin").write_bytes(b"bit rot")

    assert checkpoint.latest(tmp_path) == (1, tmp_path.resolve() / "step-00000001")


@pytest.mark.parametrize("damage", ["no_manifest", "bad_json", "wrong_step", "missing_file"])
def test_latest_skips_a_partial_checkpoint(tmp_path: Path, damage: str) -> None:
    checkpoint.save(tmp_path, 1, _writer("one"))
    newest = checkpoint.save(tmp_path, 2, _writer("two"))
    manifest = newest / "manifest.json"
    if damage == "no_manifest":
        manifest.unlink()
    elif damage == "bad_json":
        manifest.write_text("{not json")
    elif damage == "wrong_step":
        manifest.write_text(manifest.read_text().replace('"step": 2', '"step": 9'))
    else:
        (newest / "state.json").unlink()

    assert checkpoint.latest(tmp_path)[0] == 1  # type: ignore[index]


def test_latest_ignores_temp_directories_and_strays(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 3, _writer("three"))
    (tmp_path / ".tmp-step-00000004-dead").mkdir()  # a save cut short by a crash
    (tmp_path / "step-abc").mkdir()
    (tmp_path / "notes.txt").write_text("hi")

    assert checkpoint.latest(tmp_path)[0] == 3  # type: ignore[index]


def test_keeps_only_the_last_two(tmp_path: Path) -> None:
    for step in range(1, 6):
        checkpoint.save(tmp_path, step, _writer(str(step)))

    assert [step for step, _ in checkpoint.list_steps(tmp_path)] == [4, 5]


def test_a_corrupt_checkpoint_does_not_count_towards_the_two_kept(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, _writer("1"))
    second = checkpoint.save(tmp_path, 2, _writer("2"))
    (second / "state.json").write_text("tampered")
    checkpoint.save(tmp_path, 3, _writer("3"))

    assert 1 in [step for step, _ in checkpoint.list_steps(tmp_path)]
    (tmp_path / "step-00000003" / "manifest.json").unlink()
    assert checkpoint.latest(tmp_path)[0] == 1  # type: ignore[index]


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 4, _writer("first"))
    path = checkpoint.save(tmp_path, 4, _writer("second"))

    assert (path / "state.json").read_text() == "second"
    assert checkpoint.latest(tmp_path) == (4, path)


def test_stale_temp_directories_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-step-00000001-dead"
    stale.mkdir()
    old = 1_000_000_000
    os.utime(stale, (old, old))

    checkpoint.save(tmp_path, 2, _writer("two"))
    assert not stale.exists()


def test_save_refuses_a_symlink_out_of_root(tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("secret")
    root = tmp_path / "ckpt"

    def write(directory: Path) -> None:
        (directory / "link").symlink_to(secret)

    with pytest.raises(checkpoint.CheckpointError, match="regular files"):
        checkpoint.save(root, 1, write)
    assert list(root.iterdir()) == []


def test_manifest_naming_a_file_outside_its_directory_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    path = checkpoint.save(root, 1, _writer("one"))
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../outside.txt"] = checkpoint._sha256(outside)
    (path / "manifest.json").write_text(json.dumps(manifest))

    assert checkpoint.latest(root) is None


def test_symlinked_step_directory_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    real = checkpoint.save(elsewhere, 9, _writer("nine"))
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "step-00000009").symlink_to(real, target_is_directory=True)

    assert checkpoint.latest(root) is None


def test_negative_step_is_refused(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="non-negative"):
        checkpoint.save(tmp_path, -1, _writer("x"))


# -- JobContext on top of checkpoints ---------------------------------------------------------


def test_context_checkpoint_and_restore_emit_events(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert ctx.restore() is None
    ctx.checkpoint(5, _writer("five"))

    step, directory = ctx.restore()  # type: ignore[misc]
    assert step == 5 and (directory / "state.json").read_text() == "five"
    assert [(e["type"], e["step"]) for e in ctx.events] == [("checkpoint", 5), ("resumed", 5)]
    assert ctx.workdir.is_dir()


def test_context_report_coerces_scalars_and_refuses_nan(tmp_path: Path) -> None:
    sent: list[dict] = []
    ctx = _context(tmp_path, emit=sent.append)
    ctx.report(1, loss=np.float32(0.5), accuracy=1)

    assert sent[0]["type"] == "progress" and sent[0]["step"] == 1
    assert sent[0]["metrics"] == {"loss": 0.5, "accuracy": 1.0}
    assert json.loads(json.dumps(sent[0])) == sent[0]
    with pytest.raises(ValueError, match="'loss'"):
        ctx.report(2, loss=math.nan)
    with pytest.raises(ValueError, match="must be a number"):
        ctx.report(2, loss="low")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpus", "cpuset", "threads"),
    [(0.5, (), 1), (1.0, (), 1), (2.7, (), 2), (4, (0, 1), 2), (1, (0, 1, 2), 1)],
)
def test_threads_are_whole_cpus_given_within_the_cpuset(
    cpus: float, cpuset: tuple[int, ...], threads: int
) -> None:
    assert Allotment(cpus=cpus, memory=1, cpuset=cpuset).threads == threads


# -- per attempt, committed with the attempt's fencing token ------------------------------------
def test_checkpoints_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = checkpoint.save(tmp_path / "job" / "attempt-1", 1, _writer("one"))
    finally:
        os.umask(old)
    assert (tmp_path / "job").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "job" / "attempt-1").stat().st_mode & 0o777 == 0o700
    for entry in [path, *path.rglob("*")]:
        assert entry.stat().st_mode & 0o777 == (0o700 if entry.is_dir() else 0o600), entry


def test_restore_takes_only_committed_checkpoints_newest_valid_first(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    old = checkpoint.save(root / "attempt-1", 3, _writer("three"), keep=None)
    newer = checkpoint.save(root / "attempt-1", 6, _writer("six"), keep=None)
    checkpoint.save(root / "attempt-1", 9, _writer("nine"), keep=None)  # never committed
    (newer / "state.json").write_text("tampered")
    ctx = _context(tmp_path, restore_from=[(6, newer), (3, old)])
    assert ctx.restore() == (3, old)  # 9 was not committed, 6 does not verify
    assert _context(tmp_path, restore_from=[]).restore() is None  # nothing committed: zero


def test_checkpoints_under_a_supervisor_are_not_pruned_by_the_job(tmp_path: Path) -> None:
    ctx = _context(tmp_path, restore_from=[])
    for step in range(1, 5):
        ctx.checkpoint(step, _writer(str(step)))
    assert [s for s, _ in checkpoint.list_steps(ctx.checkpoint_dir)] == [1, 2, 3, 4]


def test_pruning_after_a_commit_keeps_what_may_be_resumed_and_what_is_newer(tmp_path: Path) -> None:
    for attempt, steps in ((1, (3, 6)), (2, (9, 12, 15)), (3, (18,))):
        for step in steps:
            checkpoint.save(tmp_path / f"attempt-{attempt}", step, _writer("x"), keep=None)
    (tmp_path / "attempt-1" / ".tmp-step-00000007-dead").mkdir()
    checkpoint.prune_committed(tmp_path, 2, ["attempt-2/step-00000012", "attempt-1/step-00000006"])
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("attempt-*/*"))
    assert left == ["attempt-1/step-00000006", "attempt-2/step-00000012",
                    "attempt-2/step-00000015", "attempt-3/step-00000018"]
    checkpoint.prune_committed(tmp_path, 2, ["attempt-2/step-00000015", "attempt-2/step-00000012"])
    assert not (tmp_path / "attempt-1").exists()
    assert (tmp_path / "attempt-3" / "step-00000018").is_dir()  # a newer attempt's: untouched


def test_a_committed_name_from_redis_cannot_climb_out() -> None:
    assert checkpoint.parse_committed("attempt-2/step-00000012") == (2, 12)
    for bad in ("../attempt-2/step-00000012", "attempt-2/../../etc", "/abs/step-00000001",
                "attempt-2/step-12", "attempt-x/step-00000012", "attempt-2/step-00000012\n", ""):
        assert checkpoint.parse_committed(bad) is None, bad
