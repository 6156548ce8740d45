"""A code folder packed again only when something in it changed: a sweep's hundred submits of
one folder read and hash its files once (5 MiB cost ~10 ms a submit, more than the rest of a
submit together; `scripts/bench_bundles.py`).

On every call, what `pack` would hold is listed and each file's source is `stat`ed (cheap); the
bytes are read and hashed only when that differs from the folder's last pack. A file's
signature is its name in the bundle, the path its bytes come from, and its device, inode, size,
mode, mtime and ctime (nanoseconds), taken *before* its bytes are read, so that a write during
or after the read shows as a change the next time.

One change is invisible to `stat` (git calls it "racily clean"): a file written again within
one tick of the file system's clock, its size unchanged, keeps its times. So a pack is
remembered only when every file's mtime and ctime were `SETTLE_S` seconds old when it was made:
a write after that stamps a later time, whatever the tick. A folder being edited is packed
afresh on each submit, as without the memo.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from fleet.bundles.pack import DEFAULT_CAP, Bundle, Entry, build, scan

SETTLE_S = 2.0
MEMO_FOLDERS = 4  # folders remembered, the last used ones
MEMO_BYTES = 64 * 2**20  # their archives are kept in memory: at most this much in all



class _Seen(NamedTuple):
    """One file as `stat` saw it before its bytes were read."""

    name: str
    source: str
    executable: bool
    dev: int
    ino: int
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int


Signature = tuple[_Seen, ...]


class PackMemo:
    """`pack` with the last bundle of each folder remembered. Thread-safe."""

    def __init__(self, settle: float = SETTLE_S, folders: int = MEMO_FOLDERS,
                 budget: int = MEMO_BYTES) -> None:
        self.settle_ns = int(settle * 1e9)
        self.folders = folders
        self.budget = budget
        self._last: OrderedDict[str, tuple[Signature, Bundle]] = OrderedDict()
        self._lock = threading.Lock()

    def pack(self, folder: Path, cap: int = DEFAULT_CAP) -> Bundle:
        """What `fleet.bundles.pack.pack(folder, cap)` returns, the same bytes and refusals."""
        started = time.time_ns()
        entries = scan(folder, cap)
        signature = _signature(entries)
        key = str(Path(folder).resolve())
        with self._lock:
            known = self._last.get(key)
            if known is not None and signature is not None and known[0] == signature:
                self._last.move_to_end(key)
                return known[1]
        bundle = build(entries)
        if signature is not None and _settled(signature, started - self.settle_ns):
            self._remember(key, signature, bundle)
        return bundle

    def forget(self) -> None:
        """Remember nothing: the next pack of every folder reads it again."""
        with self._lock:
            self._last.clear()

    def _remember(self, key: str, signature: Signature, bundle: Bundle) -> None:
        if len(bundle.data) > self.budget:
            return
        with self._lock:
            self._last[key] = (signature, bundle)
            self._last.move_to_end(key)
            while (len(self._last) > self.folders
                   or sum(len(b.data) for _, b in self._last.values()) > self.budget):
                self._last.popitem(last=False)


def _signature(entries: list[Entry]) -> Signature | None:
    """Each file as `stat` sees it now; None when one changed size since the listing (it is
    being written: not worth remembering) or went away (`build` says so)."""
    out = []
    for e in entries:
        try:
            st = os.stat(e.source)
        except OSError:
            return None
        if st.st_size != e.size:
            return None
        out.append(_Seen(e.name, e.source, e.executable, st.st_dev, st.st_ino, st.st_size,
                         st.st_mode, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _settled(signature: Signature, before_ns: int) -> bool:
    """Every file's mtime and ctime earlier than `before_ns`."""
    return all(f.mtime_ns < before_ns and f.ctime_ns < before_ns for f in signature)


PACKS = PackMemo()  # the process's: every Client in it packs through this one
