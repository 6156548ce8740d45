"""Pack a folder of code into a canonical archive whose sha256 names it.

The archive is an *uncompressed* POSIX (pax) tar: gzip's bytes depend on the zlib build
(zlib-ng, which some distributions ship, compresses differently), so a compressed archive would
give one folder two digests on two machines and the store would keep it twice. An uncompressed
tar is a function of the content alone, its size is bounded by the cap checked here (no
decompression bomb on the node), and the transport may compress it on the way if it wants.

Canonical means: regular files only (directories are implicit, so empty ones are not kept, as in
git), sorted by their path, mtime 0, uid/gid 0, no user or group names, mode 0o755 when the file
has any executable bit and 0o644 otherwise. Nothing else of the file system reaches the bytes.

Links: a link whose target stays inside the folder is stored as what it points to (a file's
content, a directory's files), so the archive holds no link at all and the node can refuse every
link member outright. A link leaving the folder, a broken link, a link loop and special files
(fifo, socket, device) are refused with a `BundleError` naming the path.

What is left out: `DEFAULT_EXCLUDES`, then the folder's own `.fleetignore` (`.gitignore` syntax,
read with `pathspec`; its lines come after the defaults, so `!.venv/` would bring a default back).
As in git, an excluded directory is not entered, so a negation cannot re-include a file under it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from fleet.errors import SpecError
from fleet.units import format_memory

DEFAULT_CAP = 100 * 2**20
DEFAULT_EXCLUDES: tuple[str, ...] = ("__pycache__/", ".git", ".venv/", "*.pyc")
IGNORE_FILE = ".fleetignore"
LARGEST_NAMED = 5  # files named in the over-the-cap message


class BundleError(SpecError):
    """A code folder that cannot be packed: one line naming the path and the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__("code", reason)


@dataclass(frozen=True)
class Bundle:
    """A packed folder: the archive's bytes, their digest, and what they hold."""

    data: bytes = field(repr=False)
    digest: str  # "sha256:<64 hex>" of `data`
    files: int
    size: int  # the files' bytes, what the cap is checked against (the tar adds its headers)


@dataclass(frozen=True)
class Entry:
    """A file to pack, as the walk found it; its bytes are read only by `build`."""

    name: str  # the path inside the bundle, '/'-separated
    source: str  # where its bytes are read from (a link's target, resolved)
    size: int
    executable: bool


def pack(folder: Path, cap: int = DEFAULT_CAP) -> Bundle:
    """The bundle of `folder`: what `.fleetignore` and the defaults leave, checked against `cap`
    (bytes of file content) from the sizes on disk before any file is read."""
    return build(scan(folder, cap))


def scan(folder: Path, cap: int = DEFAULT_CAP) -> list[Entry]:
    """The files `pack` would hold, sorted, their sizes checked against `cap`; none read yet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"code folder {folder} does not exist or is not a folder")
    entries = _walk(folder.resolve(), _ignore_spec(folder))
    if not entries:
        raise BundleError(f"code folder {folder} has no files to pack (all ignored, or empty)")
    total = sum(e.size for e in entries)
    if total > cap:
        raise BundleError(_over_cap(folder, total, cap, entries))
    return entries


def build(entries: list[Entry]) -> Bundle:
    """The archive of what `scan` found, the files read now."""
    data = _archive(entries)
    return Bundle(data=data, digest="sha256:" + hashlib.sha256(data).hexdigest(),
                  files=len(entries), size=sum(e.size for e in entries))


def _ignore_spec(folder: Path) -> pathspec.GitIgnoreSpec:
    lines = list(DEFAULT_EXCLUDES)
    ignore = folder / IGNORE_FILE
    if ignore.is_file():
        try:
            lines += ignore.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{ignore}: cannot be read ({exc})") from exc
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except ValueError as exc:  # pathspec's GitWildMatchPatternError is a ValueError
        raise BundleError(f"{ignore}: {exc}") from exc


def _walk(root: Path, spec: pathspec.GitIgnoreSpec) -> list[Entry]:
    """Every file to pack, sorted by name. Links are followed (inside the folder only);
    `ancestors` are the real directories on the way down, to catch a link loop."""
    root_real = str(root)
    entries: list[Entry] = []

    def visit(directory: str, prefix: str, ancestors: frozenset[str]) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise BundleError(f"{prefix or '.'}: cannot be listed ({exc.strerror})") from exc
        for name in names:
            rel, path = prefix + name, os.path.join(directory, name)
            try:
                st, target = os.lstat(path), path
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(path)
                    st = os.stat(path)
            except FileNotFoundError as exc:  # a broken link (or a file gone since the listing)
                if spec.match_file(rel):
                    continue
                raise BundleError(f"{rel}: a broken link or a file that went away") from exc
            except OSError as exc:
                raise BundleError(f"{rel}: cannot be read ({exc.strerror})") from exc
            is_dir = stat.S_ISDIR(st.st_mode)
            if spec.match_file(rel + "/" if is_dir else rel):
                continue
            if target != path and not _inside(target, root_real):
                raise BundleError(f"{rel}: a link leaving the code folder (to {target}); "
                                  f"copy what it points to into the folder, or add it to {IGNORE_FILE}")
            if is_dir:
                real = os.path.realpath(path)
                if real in ancestors:
                    raise BundleError(f"{rel}: a link loop (back to {real})")
                visit(path, rel + "/", ancestors | {real})
            elif stat.S_ISREG(st.st_mode):
                _check_name(rel)
                entries.append(Entry(rel, target, st.st_size, bool(st.st_mode & 0o111)))
            else:
                raise BundleError(f"{rel}: a {_kind(st.st_mode)}, not a regular file; "
                                  f"remove it or add it to {IGNORE_FILE}")

    visit(root_real, "", frozenset({root_real}))
    return sorted(entries, key=lambda e: e.name)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_name(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BundleError(f"{rel!r}: a file name that is not UTF-8; rename it") from exc


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _over_cap(folder: Path, total: int, cap: int, entries: Iterable[Entry]) -> str:
    largest = sorted(entries, key=lambda e: (-e.size, e.name))[:LARGEST_NAMED]
    named = ", ".join(f"{e.name} {format_memory(e.size)}" for e in largest)
    return (f"code folder {folder} is {format_memory(total)}, over the {format_memory(cap)} cap; "
            f"largest: {named}; add what the job does not need to {IGNORE_FILE}")


def _archive(entries: Iterable[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            content = _read(entry)
            info = tarfile.TarInfo(entry.name)
            info.size = len(content)
            info.mode = 0o755 if entry.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _read(entry: Entry) -> bytes:
    """The file's bytes, which must still be the size seen by the walk (the cap was checked
    on those sizes: a file growing meanwhile must not slip past it)."""
    try:
        with open(entry.source, "rb") as f:
            content = f.read(entry.size + 1)
    except OSError as exc:
        raise BundleError(f"{entry.name}: cannot be read ({exc.strerror})") from exc
    if len(content) != entry.size:
        raise BundleError(f"{entry.name}: changed while it was being packed; pack again")
    return content
