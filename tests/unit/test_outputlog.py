"""The on-disk log of an attempt: capped, its newest output kept, the cut said where it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fleet.observe.logs import older_half, read_stored
from workers.attempt.outputlog import OutputLog


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(first, last + 1))


def test_a_log_under_its_cap_is_kept_whole_in_one_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    log = OutputLog(path, max_bytes=1 << 20)
    log.write(lines(1, 100))
    log.write(lines(101, 200))
    log.close()
    assert path.read_bytes() == lines(1, 200)
    assert not older_half(path).exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_stored(path) == lines(1, 200).decode()


def test_a_log_past_its_cap_keeps_its_tail_and_says_what_was_cut(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    cap = 64 << 10
    log = OutputLog(path, max_bytes=cap)
    total = 20000  # 12 bytes a line: 240 kB, several caps
    for first in range(1, total, 700):  # writes of assorted sizes, across the halves
        log.write(lines(first, min(first + 699, total)))
    log.close()
    on_disk = path.stat().st_size + older_half(path).stat().st_size
    assert on_disk <= cap + 100  # the note's line on top
    stored = read_stored(path).splitlines()
    note, kept = stored[0], stored[1:]
    # halves are cut at a line's end: the tail is whole lines, in order, up to the last
    assert kept == [f"line {i:06d}" for i in range(total - len(kept) + 1, total + 1)]
    assert len(kept) * 12 >= cap // 2
    cut = (total - len(kept)) * 12
    assert note == f"[fleet: {cut / 2**20:.1f} MiB of earlier output cut]"
    for half in (path, older_half(path)):
        assert stat.S_IMODE(os.stat(half).st_mode) == 0o600


def test_reading_a_missing_log_gives_nothing(tmp_path: Path) -> None:
    assert read_stored(tmp_path / "output.log") == ""


def test_a_log_found_bigger_than_a_half_becomes_the_older_half(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(lines(1, 1000))  # 12 kB, over a 4 kB cap
    log = OutputLog(path, max_bytes=4096)
    log.write(lines(1001, 1010))
    log.close()
    stored = read_stored(path).splitlines()
    assert stored[-10:] == [f"line {i:06d}" for i in range(1001, 1011)]
    assert older_half(path).read_bytes() == lines(1, 1000)  # dropped at the next rotation
    assert path.read_bytes() == lines(1001, 1010)
