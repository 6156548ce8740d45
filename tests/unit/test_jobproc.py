"""The job process's event writer: batched, complete, in order, and never held for long."""

from __future__ import annotations

import json
import os
import select
import time

from workers.jobproc import EventWriter


def read_lines(fd: int, timeout: float) -> tuple[int, list[dict]]:
    """(number of reads it took, events) for what arrives within `timeout`."""
    reads, data = 0, b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        data += os.read(fd, 1 << 20)
        reads += 1
    return reads, [json.loads(line) for line in data.splitlines()]


def test_a_burst_of_reports_arrives_whole_and_in_order_in_one_write() -> None:
    r, w = os.pipe()
    writer = EventWriter(w, interval=0.2)
    for step in range(200):
        writer.emit({"type": "progress", "step": step})
        writer.emit({"type": "checkpoint", "step": step})
    reads, events = read_lines(r, 0.6)
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(200))
    assert len(events) == 400
    assert reads == 1


def test_the_outcome_is_written_at_once_after_what_was_held() -> None:
    r, w = os.pipe()
    writer = EventWriter(w, interval=60.0)  # the flusher would not run during this test
    writer.emit({"type": "progress", "step": 1})
    writer.emit({"type": "result", "result": {"ok": True}})
    _, events = read_lines(r, 0.2)
    assert [e["type"] for e in events] == ["progress", "result"]


def test_a_lone_report_is_not_held_past_the_interval() -> None:
    r, w = os.pipe()
    writer = EventWriter(w, interval=0.05)
    writer.emit({"type": "progress", "step": 7})
    start = time.monotonic()
    assert select.select([r], [], [], 5)[0], "the report never came"
    assert time.monotonic() - start < 5
    assert json.loads(os.read(r, 4096))["step"] == 7


def test_a_forked_child_reports_on_its_own_and_does_not_repeat_the_parents() -> None:
    r, w = os.pipe()
    writer = EventWriter(w, interval=0.05)
    writer.emit({"type": "progress", "step": 1, "who": "parent"})  # held when the fork comes
    pid = os.fork()
    if pid == 0:  # the child: one report of its own, written by its own flusher thread
        try:
            writer.emit({"type": "progress", "step": 2, "who": "child"})
            time.sleep(0.5)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    _, events = read_lines(r, 0.5)
    assert sorted((e["who"], e["step"]) for e in events) == [("child", 2), ("parent", 1)]
