"""A node's cache of code bundles: verified, then unpacked read-only, once per digest.

`unpack` guarantees:
- the bytes are checked against the digest before anything is written: a tampered store is
  refused with expected and got, and leaves nothing;
- every member is checked before any is extracted: only regular files and directories, with
  relative, canonical names (no `/` at the start, no `..`, no `.` or empty parts, no
  duplicates), at most `MAX_MEMBERS` of them and at most `cap` bytes in all; links (symbolic or
  hard), devices and fifos are refused (`fleet.bundles.pack` stores a link inside the folder as
  what it points to, so a bundle has none). tarfile's `data` filter is a second line of defence
  where the Python has it (not Debian bookworm's 3.11.2, which the stock images run);
- `cache_root/<hex>/` appears whole or not at all: members go into a temporary folder in
  `cache_root` that is renamed into place, so a reader never sees half a bundle, and when two
  processes unpack one digest at once, one rename wins and the other drops its copy;
- the result is read-only: files 0o444 (0o555 when executable), folders 0o555.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

MAX_MEMBERS = 100_000
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_TMP_PREFIX = ".tmp-"
# Regular files and folders only: not contiguous files nor GNU sparse ones, whose size on disk
# is not the size in the header.
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
# What tarfile raises on a malformed header: its own errors, and a few bare ones (a GNU sparse
# map without its newline is a ValueError, a truncated one an EOFError).
_UNREADABLE = (tarfile.TarError, ValueError, EOFError)


class BundleRejected(Exception):
    """A bundle the node will not run: a digest mismatch or an unsafe archive. One line."""


def lookup(digest: str, cache_root: Path) -> Path | None:
    """The unpacked bundle of `digest` if this node has it (so it need not fetch the bytes)."""
    path = Path(cache_root) / _hex(digest)
    return path if path.is_dir() else None


def unpack(data: bytes, digest: str, cache_root: Path, cap: int) -> Path:
    """`cache_root/<hex>/`, the bundle `data` unpacked read-only, after checking that `data` is
    what `digest` names and that every member is safe; at once when it is there already."""
    hex_digest = _hex(digest)
    got = hashlib.sha256(data).hexdigest()
    if got != hex_digest:
        raise BundleRejected(f"bundle digest mismatch: expected sha256:{hex_digest}, got sha256:{got}")
    cache_root = Path(cache_root)
    final = cache_root / hex_digest
    if final.is_dir():
        return final
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except _UNREADABLE as exc:
        raise BundleRejected(f"bundle is not a readable tar archive: {exc}") from exc
    with tar:
        members = _checked_members(tar, cap)
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{hex_digest[:16]}-", dir=cache_root))
        try:
            _extract(tar, members, tmp)
            _make_read_only(tmp, members)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                _remove_tree(tmp)  # another process unpacked the same digest first: keep its copy
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


def _hex(digest: str) -> str:
    """The hex of a `sha256:<hex>` digest; anything else is refused (it becomes a path)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise BundleRejected(f"not a bundle digest: {digest!r} (expected sha256:<64 hex digits>)")
    return match.group(1)


def _checked_members(tar: tarfile.TarFile, cap: int) -> list[tarfile.TarInfo]:
    """Every member, each checked, before anything is written."""
    members: list[tarfile.TarInfo] = []
    names: set[str] = set()
    total = 0
    try:
        for member in tar:
            if len(members) >= MAX_MEMBERS:
                raise BundleRejected(f"bundle has more than {MAX_MEMBERS} members")
            _check_member(member)
            if member.name in names:
                raise BundleRejected(f"bundle member {member.name!r} appears twice")
            names.add(member.name)
            total += member.size
            if total > cap:
                raise BundleRejected(f"bundle unpacks to more than its cap of {cap} bytes")
            members.append(member)
    except _UNREADABLE as exc:
        raise BundleRejected(f"bundle is not a readable tar archive: {exc}") from exc
    if not any(m.isfile() for m in members):
        raise BundleRejected("bundle holds no files")
    return members


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise BundleRejected(f"bundle member {name!r} is a link (to {member.linkname!r})")
    if member.type not in _PLAIN_TYPES or member.sparse is not None:
        raise BundleRejected(f"bundle member {name!r} is not a regular file or folder "
                             f"(tar type {member.type!r}{', sparse' if member.sparse else ''})")
    if name.startswith("/"):
        raise BundleRejected(f"bundle member {name!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise BundleRejected(f"bundle member {name!r} climbs out with '..'")
    if member.isdir() and parts[-1] == "":  # tarfile strips it; be lenient with `dir/`
        parts = parts[:-1]
    if any(p in ("", ".") for p in parts) or "\0" in name or "\\" in name:
        raise BundleRejected(f"bundle member {name!r} is not a plain relative path")
    if member.size < 0:
        raise BundleRejected(f"bundle member {name!r} has a negative size")


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], into: Path) -> None:
    try:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+: a second line of defence
            tar.extractall(into, members=members, filter="data")
        else:  # the members are checked above either way (tested with the filter hidden)
            tar.extractall(into, members=members)
    except (*_UNREADABLE, OSError) as exc:
        raise BundleRejected(f"bundle could not be unpacked: {exc}") from exc


def _make_read_only(root: Path, members: list[tarfile.TarInfo]) -> None:
    for member in members:
        if member.isfile():
            os.chmod(root / PurePosixPath(member.name), 0o555 if member.mode & 0o111 else 0o444)
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)


def _remove_tree(path: Path) -> None:
    """rmtree of a tree that may be read-only already (its folders made writable first)."""
    if not path.exists():
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path)
