"""Packing a code folder: the same content gives the same digest, ignores follow git's rules,
and what cannot be packed is refused with one line naming it."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
from pathlib import Path

import pytest

from fleet.bundles import DEFAULT_CAP, Bundle, BundleError, pack
from fleet.errors import SpecError


def write(root: Path, rel: str, content: bytes | str = b"x", mode: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mode is not None:
        path.chmod(mode)
    return path


def members(bundle: Bundle) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:") as tar:
        return {m.name: m for m in tar}


def contents(bundle: Bundle) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:") as tar:
        out = {}
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None
            with f:
                out[m.name] = f.read()
        return out


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    write(root, "train.py", "def train(ctx):\n    pass\n")
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/model.py", "W = 1\n")
    write(root, "run.sh", "#!/bin/sh\n", mode=0o750)
    return root


def test_bundle_is_a_canonical_tar_named_by_its_sha256(code: Path) -> None:
    bundle = pack(code)
    assert bundle.digest == "sha256:" + hashlib.sha256(bundle.data).hexdigest()
    assert (bundle.files, bundle.size) == (4, sum(len(v) for v in contents(bundle).values()))
    found = members(bundle)
    assert list(found) == sorted(found) == ["pkg/__init__.py", "pkg/model.py", "run.sh", "train.py"]
    for m in found.values():
        assert m.isfile() and (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert found["run.sh"].mode == 0o755 and found["train.py"].mode == 0o644
    assert "data" not in repr(bundle) and bundle.digest in repr(bundle)


def test_same_content_same_digest_whatever_mtimes_owners_and_order(code: Path, tmp_path: Path) -> None:
    first = pack(code)
    # A copy made file by file in the reverse order, other mtimes and an other owner, other modes
    # apart from the executable bit: the same bytes.
    copy = tmp_path / "copy"
    for path in sorted(code.rglob("*"), reverse=True):
        if path.is_file():
            target = write(copy, str(path.relative_to(code)), path.read_bytes())
            target.chmod(0o700 if os.access(path, os.X_OK) else 0o600)
            os.utime(target, (1_000_000, 1_000_000))
            if os.geteuid() == 0:
                os.chown(target, 12345, 12345)
    os.utime(code / "train.py", None)
    assert pack(copy).digest == first.digest == pack(code).digest
    # ... and any change of content, name or executable bit gives another digest.
    write(copy, "pkg/model.py", "W = 2\n")
    assert pack(copy).digest != first.digest
    shutil.copytree(code, tmp_path / "renamed")
    (tmp_path / "renamed/train.py").rename(tmp_path / "renamed/train2.py")
    assert pack(tmp_path / "renamed").digest != first.digest
    (code / "train.py").chmod(0o755)
    assert pack(code).digest != first.digest


def test_defaults_leave_out_caches_git_and_venv(code: Path) -> None:
    write(code, "__pycache__/train.cpython-311.pyc")
    write(code, "pkg/__pycache__/model.cpython-311.pyc")
    write(code, "pkg/old.pyc")
    write(code, ".git/HEAD", "ref: refs/heads/main\n")
    write(code, "sub/.git", "gitdir: /elsewhere\n")  # a worktree's .git is a file
    write(code, ".venv/lib/site.py")
    os.symlink("/usr/bin/python3", code / ".venv/python")  # links outside, but left out first
    assert set(members(pack(code))) == {"pkg/__init__.py", "pkg/model.py", "run.sh", "train.py"}


def test_fleetignore_uses_gitignore_rules(code: Path) -> None:
    write(code, "data/big.bin")
    write(code, "data/small.csv")
    write(code, "logs/a.log")
    write(code, "logs/keep.log")
    write(code, "notes/build/out.o")
    write(code, "build", "a file named like the folder pattern below")
    write(code, ".fleetignore", "\n".join([
        "# comments and blank lines are ignored", "",
        "data/*", "!data/small.csv",  # negation of a file whose folder is not excluded: kept
        "*.log", "!keep.log",
        "build/",  # a folder pattern: the folder notes/build, not the file build
        "pkg/",  # an excluded folder is not entered ...
        "!pkg/model.py",  # ... so this cannot bring its file back (as in git)
    ]) + "\n")
    assert set(members(pack(code))) == {
        ".fleetignore", "build", "data/small.csv", "logs/keep.log", "run.sh", "train.py"}


def test_fleetignore_negation_can_bring_a_default_back(code: Path) -> None:
    write(code, "vendor/.git/config")
    write(code, ".fleetignore", "!.git\n")
    assert "vendor/.git/config" in members(pack(code))


def test_over_the_cap_names_the_total_and_the_five_largest_files(code: Path) -> None:
    for i, mib in enumerate([7, 1, 6, 2, 5, 3, 4]):
        with open(code / f"blob{i}.bin", "wb") as f:
            f.truncate(mib * 2**20)  # sparse: the cap is checked from sizes, not reads
    with pytest.raises(BundleError) as caught:
        pack(code, cap=10 * 2**20)
    message = str(caught.value)
    assert "\n" not in message and str(code) in message
    assert "is 28Mi, over the 10Mi cap; largest: " in message
    assert "blob0.bin 7Mi, blob2.bin 6Mi, blob4.bin 5Mi, blob6.bin 4Mi, blob5.bin 3Mi;" in message
    assert "blob3.bin" not in message and ".fleetignore" in message
    assert isinstance(caught.value, SpecError) and caught.value.field == "code"
    assert DEFAULT_CAP == 100 * 2**20


def test_a_folder_at_the_cap_packs(tmp_path: Path) -> None:
    write(tmp_path / "c", "a.bin", b"\0" * 1000)
    assert pack(tmp_path / "c", cap=1000).size == 1000


def test_a_link_inside_the_folder_is_stored_as_what_it_points_to(code: Path) -> None:
    os.symlink("pkg/model.py", code / "model_link.py")
    os.symlink("pkg", code / "pkg_link")
    os.symlink("../run.sh", code / "pkg/run_link.sh")
    bundle = pack(code)
    found, data = members(bundle), contents(bundle)
    assert all(m.isfile() for m in found.values())
    assert data["model_link.py"] == data["pkg_link/model.py"] == b"W = 1\n"
    assert found["pkg/run_link.sh"].mode == 0o755


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.py", "/tmp"])
def test_a_link_leaving_the_folder_is_refused(code: Path, target: str) -> None:
    write(code.parent, "outside.py")
    os.symlink(target, code / "pkg/escape")
    with pytest.raises(BundleError, match=r"^code: pkg/escape: a link leaving the code folder"):
        pack(code)


def test_a_broken_link_and_a_link_loop_are_refused(code: Path, tmp_path: Path) -> None:
    os.symlink("nowhere.py", code / "broken.py")
    with pytest.raises(BundleError, match="broken.py: a broken link"):
        pack(code)
    (code / "broken.py").unlink()
    os.symlink("..", code / "pkg/up")
    with pytest.raises(BundleError, match="pkg/up: a link loop"):
        pack(code)


def test_special_files_are_refused(code: Path) -> None:
    os.mkfifo(code / "pkg/pipe")
    with pytest.raises(BundleError, match=r"pkg/pipe: a fifo, not a regular file"):
        pack(code)
    (code / "pkg/pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(code / "sock"))
        with pytest.raises(BundleError, match=r"sock: a socket, not a regular file"):
            pack(code)


def test_ignored_special_files_and_links_do_not_matter(code: Path) -> None:
    os.mkfifo(code / "pipe")
    os.symlink("/etc/passwd", code / "passwd")
    write(code, ".fleetignore", "pipe\npasswd\n")
    assert set(members(pack(code))) == {".fleetignore", "pkg/__init__.py", "pkg/model.py",
                                        "run.sh", "train.py"}


def test_missing_or_empty_folder_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"code folder {tmp_path / 'nope'} does not exist"):
        pack(tmp_path / "nope")
    write(tmp_path, "a_file.py")
    with pytest.raises(BundleError, match="is not a folder"):
        pack(tmp_path / "a_file.py")
    (tmp_path / "empty/sub").mkdir(parents=True)
    with pytest.raises(BundleError, match=f"code folder {tmp_path / 'empty'} has no files"):
        pack(tmp_path / "empty")
    write(tmp_path, "only_cache/__pycache__/x.pyc")
    with pytest.raises(BundleError, match="has no files"):
        pack(tmp_path / "only_cache")


def test_long_and_non_ascii_names_round_trip(code: Path) -> None:
    deep = "/".join(["a_long_folder_name_" + "x" * 40] * 5) + "/modèle_ü.py"
    write(code, deep, "ok")
    assert contents(pack(code))[deep] == b"ok"
