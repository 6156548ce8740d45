"""An attempt's log, shipped to a store in chunks beside the job: real files, a real
FileStorage over tmp dirs, a clock the test moves; a store that fails is a FileStorage whose
folder cannot be made (a file in its way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.observe.logs import LOG_LINES_CAP, JobLogs, read_chunks, stored_log
from fleet.spec import JobSpec
from fleet.states import EndReason
from fleet.storage import FileStorage, layout
from fleet.store.jobstore import Outcome
from fleet.store.memory import MemoryStore
from workers.attempt.logship import LogShipper

JOB = "j-1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(first, last + 1))


def chunks(store: FileStorage, attempt: int = 1) -> list[tuple[int, bytes]]:
    prefix = f"{layout.attempt_prefix(JOB, attempt)}log/"
    return [(int(o.key.rpartition("/")[2]), store.get_bytes(o.key)) for o in store.list(prefix)]


def joined(store: FileStorage) -> bytes:
    out = b""
    for offset, data in chunks(store):
        assert offset == len(out), "chunks are contiguous: each starts where the last ended"
        out += data
    return out


def block(store: FileStorage) -> None:
    """Every put fails from now on (a file where the store's folder was), nothing lost."""
    store.root.rename(store.root.with_name("kept"))
    store.root.write_text("in the way")


def unblock(store: FileStorage) -> None:
    store.root.unlink()
    store.root.with_name("kept").rename(store.root)


@pytest.fixture
def store(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "store")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "node" / "output.log"
    path.parent.mkdir()
    path.touch()
    return path


def shipper(store: FileStorage, path: Path, clock: Clock, **kw: int) -> LogShipper:
    return LogShipper(store, JOB, 1, path, every=2.0, clock=clock, **kw)  # type: ignore[arg-type]


def test_chunks_go_every_interval_or_batch_at_line_ends_keyed_by_offset(
        store: FileStorage, log_path: Path) -> None:
    clock = Clock()
    ship = shipper(store, log_path, clock, batch=4096)
    out = ship.open_log(log_path, 1 << 20)
    out.write(lines(1, 10))  # 120 bytes: under the batch, before the interval
    assert ship.ship() is False and chunks(store) == []
    clock.now += 2.0
    assert ship.ship() is True
    assert chunks(store) == [(0, lines(1, 10))]
    out.write(lines(11, 1000) + b"partial")  # past the batch: goes at once, to its last line
    assert ship.ship() is False  # the partial line waits for its end, or the interval
    assert [o for o, _ in chunks(store)] == [0, 120]
    assert joined(store) == lines(1, 1000)
    clock.now += 2.0
    assert ship.ship() is True  # a line that does not end goes after the interval
    assert joined(store) == lines(1, 1000) + b"partial"
    out.close()


def test_a_big_backlog_goes_in_chunks_of_at_most_max_chunk(
        store: FileStorage, log_path: Path) -> None:
    ship = shipper(store, log_path, Clock(), batch=1024, max_chunk=5000)
    out = ship.open_log(log_path, 1 << 20)
    out.write(lines(1, 2000))  # 24,000 bytes
    assert ship.ship(final=True) is True
    sizes = [len(d) for _, d in chunks(store)]
    assert max(sizes) <= 5000 and len(sizes) >= 5
    assert all(d.endswith(b"\n") for _, d in chunks(store))
    assert joined(store) == lines(1, 2000)


def test_an_unreachable_store_keeps_the_log_on_disk_and_resumes_with_backoff(
        store: FileStorage, log_path: Path) -> None:
    clock = Clock()
    ship = shipper(store, log_path, clock, batch=50)
    out = ship.open_log(log_path, 1 << 20)
    out.write(lines(1, 5))
    assert ship.ship() is True
    block(store)
    out.write(lines(6, 50))
    assert ship.ship() is False and ship.error is not None
    clock.now += 0.5
    out.write(lines(51, 60))
    assert ship.ship() is False  # within the backoff: not even tried
    unblock(store)
    assert ship.ship() is False  # still within it
    clock.now += 1.0
    assert ship.ship() is True and ship.error is None
    assert joined(store) == lines(1, 60)
    out.close()


def test_the_end_sends_the_rest_partial_line_included(
        store: FileStorage, log_path: Path) -> None:
    ship = shipper(store, log_path, Clock(), batch=1 << 20)
    out = ship.open_log(log_path, 1 << 20)
    out.write(lines(1, 3) + b"no newline")
    assert ship.ship() is False
    out.close()
    assert ship.ship(final=True) is True
    assert joined(store) == lines(1, 3) + b"no newline"


def test_output_written_before_the_job_opened_its_log_is_sent_too(
        store: FileStorage, log_path: Path) -> None:
    log_path.write_bytes(b"pip: installing\n")  # the env's build, before the job printed
    ship = shipper(store, log_path, Clock())
    assert ship.ship(final=True) is True
    assert joined(store) == b"pip: installing\n"
    out = ship.open_log(log_path, 1 << 20)
    out.write(b"job line\n")
    assert ship.ship(final=True) is True
    assert joined(store) == b"pip: installing\njob line\n"


def test_across_the_files_rotations_nothing_is_lost_when_shipped_in_time(
        store: FileStorage, log_path: Path) -> None:
    ship = shipper(store, log_path, Clock(), batch=1)
    out = ship.open_log(log_path, 4096)  # halves of 2 KiB: a rotation every ~170 lines
    for first in range(1, 3000, 50):
        out.write(lines(first, first + 49))
        assert ship.ship() is True
    out.close()
    assert joined(store) == lines(1, 3000)


def test_output_the_disk_cap_dropped_while_the_store_was_away_is_a_hole_said_as_a_cut(
        store: FileStorage, log_path: Path) -> None:
    clock = Clock()
    ship = shipper(store, log_path, clock, batch=1)
    out = ship.open_log(log_path, 4096)
    out.write(lines(1, 10))
    assert ship.ship() is True
    block(store)
    out.write(lines(11, 2000))  # ~24 KB through a 4 KiB cap: most of it dropped
    assert ship.ship() is False
    unblock(store)
    clock.now += 5
    assert ship.ship(final=True) is True
    found = chunks(store)
    assert found[0] == (0, lines(1, 10))
    assert found[1][0] > 120  # a hole: what the cap dropped
    text = read_chunks(store, list(store.list(f"{layout.attempt_prefix(JOB, 1)}log/")), 1 << 20)
    shown = text.splitlines()
    assert shown[:10] == [f"line {i:06d}" for i in range(1, 11)]
    assert shown[10].startswith("[fleet: ") and shown[10].endswith(" of earlier output cut]")
    assert shown[-1] == "line 002000"
    assert shown[11:] == [f"line {i:06d}" for i in range(2001 - len(shown[11:]), 2001)]


def test_the_default_store_is_the_logs_own_folder_so_nothing_is_sent(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "artifacts")
    path = store.path(layout.log_key(JOB, 1))
    path.parent.mkdir(parents=True)
    path.touch()
    ship = LogShipper(store, JOB, 1, path).start()
    assert ship.skip and ship._thread is None
    ship.open_log(path, 1 << 20).write(b"hello\n")
    assert ship.finish(1.0) is True
    assert [o.key for o in store.list()] == [layout.log_key(JOB, 1)]
    assert stored_log(store, JOB, 1) == "hello\n"


def test_the_thread_sends_beside_the_writer_and_the_end_flushes(
        store: FileStorage, log_path: Path) -> None:
    ship = LogShipper(store, JOB, 1, log_path, every=0.05).start()
    out = ship.open_log(log_path, 1 << 20)
    for first in range(1, 500, 100):
        out.write(lines(first, first + 99))
    out.write(b"last, no newline")
    out.close()
    assert ship.finish(10.0) is True
    assert joined(store) == lines(1, 500) + b"last, no newline"


def test_reading_chunks_keeps_the_newest_max_bytes_and_says_the_cut(
        store: FileStorage) -> None:
    for offset in range(0, 1200, 120):
        first = offset // 12 + 1
        store.put_bytes(layout.log_chunk_key(JOB, 1, offset), lines(first, first + 9))
    listing = list(store.list(f"{layout.attempt_prefix(JOB, 1)}log/"))
    assert read_chunks(store, listing, 1 << 20) == lines(1, 100).decode()
    tail = read_chunks(store, listing, 250).splitlines()
    assert tail[0].startswith("[fleet: ") and tail[1:] == [f"line {i:06d}" for i in
                                                           range(81, 101)]


def test_logs_read_the_store_when_redis_has_not_got_the_lines(store: FileStorage) -> None:
    """An attempt whose lines are not in Redis (trimmed, or never written from its host):
    `lines` and `follow` read the store's chunks; one whose lines Redis has reads Redis."""
    jobs = MemoryStore()
    jobs.heartbeat({"node": "n1", "incarnation": "i1",
                    "capacity": {"cpus": 2.0, "memory": 2**30}}, ttl=600)
    job_id = jobs.submit(JobSpec(name="j", entrypoint="workers.jobs.synthetic:noop",
                                 max_retries=1, resources={"cpus": 1, "memory": "100Mi"}))
    for end in (EndReason.ERROR, EndReason.SUCCEEDED):
        n, why = jobs.reserve(job_id, "n1", "i1", {})
        assert n > 0, why
        assert jobs.claim(job_id, n, "n1", "i1") == (True, "ok")
        assert jobs.finish(job_id, n, "n1", Outcome(end))[0]
    store.put_bytes(layout.log_chunk_key(job_id, 1, 0), b"from the store\nsecond\n")
    jobs.logs[(job_id, 2)] = ["from redis"]
    logs = JobLogs(jobs, lambda: store, job_id)
    assert logs.lines(1) == ["from the store", "second"]
    assert logs.lines(2) == ["from redis"]
    assert [(x.attempt, x.text) for x in logs.follow(sleep=lambda s: None)] == [
        (1, "from the store"), (1, "second"), (2, "from redis")]
    (store.root / "in-the-way").write_text("a file, not a folder")
    broken = JobLogs(jobs, FileStorage(store.root / "in-the-way"), job_id)
    assert broken.lines(2) == ["from redis"]  # Redis has them: the store is not read
    with pytest.raises(FleetError, match=r"log of .* attempt 1: the store .* cannot be read"):
        broken.lines(1)


def test_following_a_running_attempt_past_redis_cap_goes_on_in_the_stores_chunks(
        store: FileStorage, log_path: Path) -> None:
    """Redis's list fills (it drops its head from then on): `follow` leaves it for the
    store's chunks, skipping the lines it showed, each line once, to the attempt's end."""
    jobs = MemoryStore()
    jobs.heartbeat({"node": "n1", "incarnation": "i1",
                    "capacity": {"cpus": 2.0, "memory": 2**30}}, ttl=600)
    job_id = jobs.submit(JobSpec(name="j", entrypoint="workers.jobs.synthetic:noop",
                                 resources={"cpus": 1, "memory": "100Mi"}))
    n, _ = jobs.reserve(job_id, "n1", "i1", {})
    assert jobs.claim(job_id, n, "n1", "i1") == (True, "ok")
    ship = LogShipper(store, job_id, 1, log_path, batch=1)
    out = ship.open_log(log_path, 1 << 30)
    total = LOG_LINES_CAP + 2000

    def printed(first: int, last: int) -> None:  # what the supervisor does with output
        out.write(lines(first, last))
        kept = jobs.logs.setdefault((job_id, 1), [])
        kept.extend(f"line {i:06d}" for i in range(first, last + 1))
        del kept[:-LOG_LINES_CAP]
        ship.ship()

    printed(1, 100)
    steps = iter([lambda: printed(101, LOG_LINES_CAP + 500),
                  lambda: printed(LOG_LINES_CAP + 501, total),
                  lambda: (out.write(b"no end"), ship.ship(final=True),
                           jobs.finish(job_id, 1, "n1", Outcome(EndReason.SUCCEEDED))),
                  lambda: None])
    shown = [x.text for x in JobLogs(jobs, store, job_id).follow(sleep=lambda s: next(steps)())]
    assert shown == [f"line {i:06d}" for i in range(1, total + 1)] + ["no end"]
