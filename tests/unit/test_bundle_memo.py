"""A folder packed again only when it changed: the same bytes as `pack`, read once while the
folder stays as it was, and any change `stat` can see (content, a new file, a replaced file,
a rewrite that kept size and mtime) packs it afresh; a folder just written is not remembered."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fleet.bundles import BundleError, pack
from fleet.bundles import memo as memo_module
from fleet.bundles.memo import PackMemo


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "train.py").write_text("def train(ctx):\n    return {}\n")
    (root / "data.bin").write_bytes(b"\x01" * 4096)
    return root


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a memo read and archived a folder."""
    made: list[int] = []
    build = memo_module.build

    def counting(entries):  # type: ignore[no-untyped-def]
        made.append(len(entries))
        return build(entries)

    monkeypatch.setattr(memo_module, "build", counting)
    return made


def settled() -> PackMemo:
    return PackMemo(settle=0)  # files written before a pack count as settled


def test_an_unchanged_folder_is_read_once_and_gives_pack_s_bytes(
        folder: Path, builds: list[int]) -> None:
    memo = settled()
    first = memo.pack(folder)
    assert memo.pack(folder) is first and memo.pack(folder / "pkg" / "..") is first
    assert builds == [2]
    assert first == pack(folder)


@pytest.mark.parametrize("change", ["content", "new file", "replaced", "same size and mtime",
                                    "executable", "ignored now"])
def test_any_change_stat_sees_packs_again(folder: Path, builds: list[int], change: str) -> None:
    memo = settled()
    before = memo.pack(folder)
    target = folder / "data.bin"
    st = target.stat()
    if change == "content":
        target.write_bytes(b"\x02" * 10)
    elif change == "new file":
        (folder / "pkg" / "more.py").write_text("x = 1\n")
    elif change == "replaced":  # an editor's save: a new file renamed over the old one
        (folder / "tmp").write_bytes(b"\x02" * 4096)
        os.replace(folder / "tmp", target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "same size and mtime":  # only the ctime tells
        target.write_bytes(b"\x02" * 4096)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "executable":
        target.chmod(0o755)
    else:
        (folder / ".fleetignore").write_text("*.bin\n")
    after = memo.pack(folder)
    assert after == pack(folder)
    assert after.digest != before.digest
    assert builds == [2, after.files]


def test_a_folder_written_just_now_is_packed_again_each_time(
        folder: Path, builds: list[int]) -> None:
    memo = PackMemo()  # files must be SETTLE_S old: these are not
    assert memo.pack(folder) == memo.pack(folder)
    assert builds == [2, 2]


def test_a_settled_folder_is_remembered(folder: Path, builds: list[int]) -> None:
    memo = PackMemo(settle=0.2)
    memo.pack(folder)
    assert builds == [2]  # not settled yet: ctime is when the fixture wrote the files
    old = [p.stat().st_ctime_ns for p in folder.rglob("*") if p.is_file()]
    while max(old) >= time.time_ns() - int(0.25e9):
        time.sleep(0.05)
    first = memo.pack(folder)
    assert memo.pack(folder) is first and builds == [2, 2]


def test_refusals_stay_those_of_pack(folder: Path) -> None:
    memo = settled()
    memo.pack(folder)
    with pytest.raises(BundleError, match="over the"):
        memo.pack(folder, cap=100)  # a lower cap: refused though remembered
    with pytest.raises(BundleError, match="does not exist"):
        memo.pack(folder / "nowhere")


def test_memory_is_bounded_by_folders_and_bytes(tmp_path: Path, builds: list[int]) -> None:
    folders = []
    for i in range(3):
        (tmp_path / f"f{i}").mkdir()
        (tmp_path / f"f{i}" / "a.py").write_bytes(b"#" * 3000)
        folders.append(tmp_path / f"f{i}")
    memo = PackMemo(settle=0, folders=2, budget=10**6)
    for f in folders:
        memo.pack(f)
    memo.pack(folders[2])
    memo.pack(folders[0])  # evicted: the oldest of three, two kept
    assert builds == [1, 1, 1, 1]
    small = PackMemo(settle=0, budget=1000)  # an archive over the budget is not kept
    small.pack(folders[1])
    small.pack(folders[1])
    assert builds[-2:] == [1, 1]
