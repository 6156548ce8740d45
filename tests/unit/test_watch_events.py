"""Events as JSON and as one human line; top's frame from plain values."""

from __future__ import annotations

from rich.console import Console

from fleet.cli.top import bar, view
from fleet.observe.events import decode_event, event_line


def test_a_stream_entry_decodes_to_the_documented_shape() -> None:
    event = decode_event(b"1700000000000-0", {b"event": b"placed", b"job": b"j-1", b"time": b"1.5",
                                              b"node": b"node-1", b"attempt": b"2"})
    assert event == {"id": "1700000000000-0", "event": "placed", "job": "j-1", "time": 1.5,
                     "node": "node-1", "attempt": 2}


def test_a_lost_node_retry_reads_as_such() -> None:
    event = decode_event("1-0", {"event": "retrying", "job": "j", "time": "0",
                                 "attempt": "1", "reason": "NODE_LOST"})
    line = event_line(event)
    assert "j retrying (node lost)" in line and "reason=NODE_LOST" in line


def test_bar_shows_used_then_reserved_of_capacity() -> None:
    assert bar(2.0, 1.0, 0.5, width=8).plain == "[██▒▒    ]"
    assert bar(0, 0, 0, width=4).plain == "[    ]"


def test_top_frame_lists_nodes_running_and_pending_jobs() -> None:
    node = {"node": "node-1", "capacity": {"cpus": 1.0, "memory": 2**30},
            "reserved": {"cpus": 1.0, "memory": 2**29}, "usage": {"cpus": 0.9, "memory": 2**28},
            "jobs": [{"job": "run-1", "step": 3}]}
    jobs = [{"id": "run-1", "state": "RUNNING", "node": "node-1", "progress": {"step": 3},
             "params": {"epochs": 5}},
            {"id": "wait-1", "state": "PENDING", "waiting": "no room for cpus", "priority": 0,
             "submitted_at": 0.0}]
    console = Console(width=200, record=True)
    console.print(view([node], jobs, now=10.0))
    text = console.export_text()
    assert "node-1" in text and "run-1 epoch 3/5" in text
    assert "pending (1)" in text and "wait-1" in text and "no room for cpus" in text


def test_top_shows_a_job_the_store_placed_before_the_nodes_report_names_it() -> None:
    node = {"node": "node-1", "capacity": {"cpus": 1.0, "memory": 2**30},
            "reserved": {"cpus": 1.0, "memory": 2**29}, "usage": {"cpus": 0.0, "memory": 0},
            "jobs": []}
    jobs = [{"id": "new-1", "state": "RUNNING", "node": "node-1", "progress": {}},
            {"id": "done-1", "state": "SUCCEEDED", "node": "node-1", "progress": {}}]
    console = Console(width=200, record=True)
    console.print(view([node], jobs, now=10.0))
    text = console.export_text()
    assert "new-1" in text and "done-1" not in text
