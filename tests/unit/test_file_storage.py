"""FileStorage on its own (no server): atomic writes, temporary files, typed errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.storage import AlreadyExists, FileStorage, NotFound, StorageDenied, StorageError
from fleet.storage.base import TEMP_PREFIX


def test_round_trip_list_and_delete(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "root")
    assert list(store.list()) == [] and not store.exists("a")
    store.put_bytes("a/b", b"12345")
    src = tmp_path / "src"
    src.write_bytes(b"x" * 3_000_000)
    store.put_file("a/c", src)
    assert [(o.key, o.size) for o in store.list("a/")] == [("a/b", 5), ("a/c", 3_000_000)]
    out = tmp_path / "out"
    store.get_file("a/c", out)
    assert out.read_bytes() == src.read_bytes()
    assert store.delete_prefix("a/") == 2 and list(store.list()) == []


def test_no_temporary_file_is_left_or_listed(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{TEMP_PREFIX}crash").write_bytes(b"half")  # a writer that died
    store.put_bytes("d/k", b"v")
    assert [o.key for o in store.list()] == ["d/k"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"{TEMP_PREFIX}crash", "k"]


def test_if_absent_is_atomic_under_racing_writers(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    won: list[int] = []

    def write(i: int) -> None:
        try:
            store.put_bytes("m", str(i).encode(), if_absent=True)
            won.append(i)
        except AlreadyExists:
            pass

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and store.get_bytes("m") == str(won[0]).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_errors_are_typed(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    with pytest.raises(NotFound):
        store.get_bytes("nope")
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotFound):
        store.get_bytes("dir")
    with pytest.raises(StorageError, match="cannot read"):
        store.put_file("k", tmp_path / "missing")
    assert not store.exists("k")


def test_permission_denied_is_typed() -> None:
    # decided on the error itself: the tests run as root too, which file modes do not stop
    from fleet.storage.files import typed

    assert isinstance(typed(PermissionError(13, "Permission denied"), "k", "put"), StorageDenied)


def test_full_disk_is_typed() -> None:
    from fleet.storage import StorageFull
    from fleet.storage.files import typed

    assert isinstance(typed(OSError(28, "No space left on device"), "k", "put"), StorageFull)


def test_a_file_where_a_folder_should_be_is_a_typed_error(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    store.put_bytes("a", b"x")
    with pytest.raises(StorageError) as caught:
        store.put_bytes("a/b", b"y")
    assert "a/b" in str(caught.value)
