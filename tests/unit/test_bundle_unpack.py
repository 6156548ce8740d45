"""Unpacking a bundle on a node: verified first, every member checked, read-only, whole or not
at all, once per digest even when two unpack it at once."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet.bundles import pack
from workers import bundle_cache
from workers.bundle_cache import MAX_MEMBERS, BundleRejected, lookup, unpack

CAP = 2**20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def member(name: str, content: bytes = b"x", **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, content if info.isfile() else None


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, b"", type=kind, linkname=target)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    (root / "pkg/sub").mkdir(parents=True)
    (root / "train.py").write_text("def train(ctx):\n    return 1\n")
    (root / "pkg/__init__.py").write_text("")
    (root / "pkg/sub/weights.bin").write_bytes(bytes(range(256)) * 10)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_unpacks_read_only_into_the_digests_folder(code: Path, tmp_path: Path) -> None:
    bundle = pack(code)
    cache = tmp_path / "cache"
    path = unpack(bundle.data, bundle.digest, cache, CAP)
    assert path == cache / bundle.digest.removeprefix("sha256:")
    assert tree(path) == tree(code)
    assert os.listdir(cache) == [path.name]  # no temporary folder left
    modes = {str(p.relative_to(path)): stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*")}
    assert modes == {"train.py": 0o444, "run.sh": 0o555, "pkg": 0o555, "pkg/__init__.py": 0o444,
                     "pkg/sub": 0o555, "pkg/sub/weights.bin": 0o444}
    assert stat.S_IMODE(path.stat().st_mode) == 0o555
    assert lookup(bundle.digest, cache) == path


def test_an_unpacked_digest_is_returned_at_once(code: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = pack(code)
    first = unpack(bundle.data, bundle.digest, tmp_path, CAP)
    monkeypatch.setattr(bundle_cache, "_extract", lambda *a: pytest.fail("extracted again"))
    assert unpack(bundle.data, bundle.digest, tmp_path, CAP) == first


def test_a_digest_mismatch_is_refused_before_anything_is_written(code: Path, tmp_path: Path) -> None:
    bundle = pack(code)
    tampered = bundle.data.replace(b"return 1", b"return 2")
    cache = tmp_path / "cache"
    got = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(BundleRejected, match=f"expected {bundle.digest}, got sha256:{got}$"):
        unpack(tampered, bundle.digest, cache, CAP)
    assert not cache.exists()
    assert lookup(bundle.digest, cache) is None


@pytest.mark.parametrize("digest", ["", "sha256:", "md5:" + "0" * 64, "sha256:" + "A" * 64,
                                    "sha256:../../etc", "sha256:" + "0" * 64 + "/x"])
def test_a_malformed_digest_is_refused(tmp_path: Path, digest: str) -> None:
    with pytest.raises(BundleRejected, match="not a bundle digest"):
        unpack(b"", digest, tmp_path / "cache", CAP)
    with pytest.raises(BundleRejected, match="not a bundle digest"):
        lookup(digest, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def big_member() -> tuple[tarfile.TarInfo, bytes | None]:
    return member("big.bin", b"\0" * (CAP + 1))


def sparse_member(sparse_map: bytes = b"1\n0\n512\n") -> tuple[tarfile.TarInfo, bytes | None]:
    """A GNU sparse file (pax 1.0): 512 bytes stored, a terabyte once written out."""
    info, content = member("sparse.bin", sparse_map.ljust(512, b"\0") + b"x" * 512)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "sparse.bin", "GNU.sparse.realsize": str(1 << 40)}
    return info, content


MALICIOUS: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute path": (lambda: archive(member("ok.py"), member("/etc/cron.d/x")), "absolute path"),
    "dot-dot": (lambda: archive(member("ok.py"), member("../x")), "climbs out"),
    "dot-dot inside": (lambda: archive(member("a/../../x")), "climbs out"),
    "dot part": (lambda: archive(member("./a.py")), "not a plain relative path"),
    "empty part": (lambda: archive(member("a//b.py")), "not a plain relative path"),
    "symlink out": (lambda: archive(link("passwd", "/etc/passwd", tarfile.SYMTYPE)), "is a link"),
    "symlink in": (lambda: archive(member("a.py"), link("b.py", "a.py", tarfile.SYMTYPE)), "is a link"),
    "hardlink out": (lambda: archive(link("h", "../../etc/shadow", tarfile.LNKTYPE)), "is a link"),
    "char device": (lambda: archive(member("null", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
                    "not a regular file"),
    "block device": (lambda: archive(member("sda", b"", type=tarfile.BLKTYPE)), "not a regular file"),
    "fifo": (lambda: archive(member("pipe", b"", type=tarfile.FIFOTYPE)), "not a regular file"),
    "sparse": (lambda: archive(sparse_member()), "not a regular file"),
    "duplicate": (lambda: archive(member("a.py", b"1"), member("a.py", b"2")), "appears twice"),
    "too big": (lambda: archive(member("ok.py"), big_member()), "more than its cap"),
    "no files": (lambda: archive(member("d", b"", type=tarfile.DIRTYPE)), "holds no files"),
    "bad sparse map": (lambda: archive(sparse_member(b"no newline" * 60)), "not a readable tar"),
    "not a tar": (lambda: b"\x1f\x8b" + b"\0" * 1000, "not a readable tar"),
    "gzip": (lambda: _gzip(archive(member("a.py"))), "not a readable tar"),
}


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_malicious_archive_is_refused_leaving_nothing(tmp_path: Path, case: str) -> None:
    build, reason = MALICIOUS[case]
    data = build()
    cache = tmp_path / "cache"
    with pytest.raises(BundleRejected, match=reason) as caught:
        unpack(data, digest_of(data), cache, CAP)
    assert "\n" not in str(caught.value)
    assert not cache.exists() or os.listdir(cache) == []
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x").exists()


def test_too_many_members_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_cache, "MAX_MEMBERS", 10)
    data = archive(*(member(f"m{i}.py") for i in range(11)))
    with pytest.raises(BundleRejected, match="more than 10 members"):
        unpack(data, digest_of(data), tmp_path, CAP)
    assert os.listdir(tmp_path) == []
    ten = archive(*(member(f"m{i}.py") for i in range(10)))
    assert len(os.listdir(unpack(ten, digest_of(ten), tmp_path, CAP))) == 10
    assert MAX_MEMBERS == 100_000


def test_a_failure_while_extracting_leaves_nothing(tmp_path: Path) -> None:
    # A file and a folder of one name pass the header checks but cannot both be written.
    data = archive(member("a", b"file"), member("a/b.py"))
    with pytest.raises(BundleRejected, match="could not be unpacked"):
        unpack(data, digest_of(data), tmp_path, CAP)
    assert os.listdir(tmp_path) == []


def test_explicit_folders_are_accepted_and_made_read_only(tmp_path: Path) -> None:
    data = archive(member("d/", b"", type=tarfile.DIRTYPE, mode=0o777), member("d/a.py", mode=0o4777))
    path = unpack(data, digest_of(data), tmp_path, CAP)
    assert stat.S_IMODE((path / "d").stat().st_mode) == 0o555
    assert stat.S_IMODE((path / "d/a.py").stat().st_mode) == 0o555


def test_concurrent_unpacks_of_one_digest_end_with_one_good_copy(code: Path, tmp_path: Path) -> None:
    bundle = pack(code)
    cache = tmp_path / "cache"
    start = threading.Barrier(8)
    results: list[Path] = []
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            results.append(unpack(bundle.data, bundle.digest, cache, CAP))
        except BaseException as exc:  # collected: the test names it
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 8
    assert os.listdir(cache) == [results[0].name] and tree(results[0]) == tree(code)


def test_losing_the_race_keeps_the_winners_copy(code: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process renames its copy into place while this one extracts: this one's rename
    fails, it drops its copy and returns the winner's, without an error."""
    bundle = pack(code)
    real_extract = bundle_cache._extract

    def extract_while_another_wins(tar: tarfile.TarFile, members: list[tarfile.TarInfo],
                                   into: Path) -> None:
        monkeypatch.setattr(bundle_cache, "_extract", real_extract)
        winner = unpack(bundle.data, bundle.digest, tmp_path / "cache", CAP)
        (winner / "pkg").chmod(0o755)
        (winner / "pkg/winner").write_text("")  # marks the winner's copy
        (winner / "pkg").chmod(0o555)
        real_extract(tar, members, into)

    monkeypatch.setattr(bundle_cache, "_extract", extract_while_another_wins)
    cache = tmp_path / "cache"
    path = unpack(bundle.data, bundle.digest, cache, CAP)
    assert (path / "pkg/winner").exists()
    assert os.listdir(cache) == [path.name]


@pytest.fixture
def no_data_filter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tarfile as on a Python without the `data` filter: Debian bookworm's 3.11.2, the one the
    stock worker images run, so every bundle in a container is unpacked this way."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    with warnings.catch_warnings():  # 3.12+ warns that extractall has no filter: meant here
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_without_tarfiles_data_filter_a_malicious_archive_is_still_refused(
        tmp_path: Path, case: str, no_data_filter: None) -> None:
    test_a_malicious_archive_is_refused_leaving_nothing(tmp_path, case)


def test_without_tarfiles_data_filter_the_unpacked_tree_is_the_same_and_read_only(
        code: Path, tmp_path: Path, no_data_filter: None) -> None:
    assert not hasattr(tarfile, "data_filter")
    test_unpacks_read_only_into_the_digests_folder(code, tmp_path)
    test_explicit_folders_are_accepted_and_made_read_only(tmp_path / "other")  # setuid cleared
    test_a_failure_while_extracting_leaves_nothing(tmp_path / "third")
