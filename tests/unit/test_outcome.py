"""The outcome table: every ending alone, none, and every pair of competing endings.

Each ending is a set of facts the supervisor can see at an attempt's end, laid over a job that
otherwise succeeded (exit code 0 with a result). The watch endings go through the real watches,
in the supervisor's order (memory, timeout, cancel, stall), so a pair of them is decided as a
tick decides it. The expected winner of a pair is read from `ORDER`, the precedence stated here
apart from the code; the outcome of each winner alone is spelled out in `ALONE`.
"""

from __future__ import annotations

import itertools
import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleet.states import EndReason
from workers.attempt import outcome
from workers.attempt.outcome import Decision, Ending, decide
from workers.attempt.watch import (
    CancelWatch,
    MemoryWatch,
    StallWatch,
    TimeoutWatch,
    Verdict,
    Vitals,
    Watch,
    first_verdict,
)

GIB = 2**30
RESULT = {"loss": 0.1}
LOG_FULL = "disk full: /a/jobs/j/attempt-1/output.log: No space left on device"
DISK_FULL = "disk full: /a/jobs: No space left on device"
ERRNO_28 = "OSError: [Errno 28] No space left on device: '/ckpt/step-1'"
KILL, TERM = -signal.SIGKILL, -signal.SIGTERM

#: What each ending adds to a successful attempt's facts.
ENDINGS: dict[str, dict[str, Any]] = {
    "superseded": {"rc": TERM, "superseded": True},  # a fenced write refused: stopped
    "fenced": {"rc": KILL, "fenced": True},  # the fork server killed it for the lease
    "disk": {"rc": TERM, "log_disk_error": LOG_FULL, "stopped_for_disk": True},
    "memory": {"rc": TERM, "watch": "memory"},
    "timeout": {"rc": TERM, "watch": "timeout"},
    "cancel": {"rc": TERM, "watch": "cancel"},
    "stall": {"rc": TERM, "watch": "stall"},
    "kernel_oom": {"rc": KILL, "oom_rose": True},
    "server_lost": {"rc": KILL, "server_lost": True},
    "disk_errno": {"rc": 1, "job_error": ERRNO_28, "disk_full": True},
    "signal": {"rc": KILL},
    "exit_code": {"rc": 1},
    "drain_disk": {"log_disk_error": LOG_FULL},  # the log failed while the pipes drained
}
#: Which of two endings decides, highest first. drain_disk never decides: it is noted.
ORDER = ("superseded", "fenced", "disk", "memory", "timeout", "cancel", "stall", "kernel_oom",
         "server_lost", "disk_errno", "signal", "exit_code", "drain_disk")
#: When two endings set the exit code, what the process returns: the kill wins.
RC_ORDER = (KILL, TERM, 1, 0)

#: (reason, error, final) of each ending alone.
ALONE: dict[str, tuple[EndReason, str, bool]] = {
    "superseded": (EndReason.NODE_LOST, "attempt superseded", False),
    "fenced": (EndReason.NODE_LOST, "fenced: the node could not renew its lease in time", False),
    "disk": (EndReason.DISK, LOG_FULL, False),
    "memory": (EndReason.OOM, "OOM: used 2Gi, over its 1Gi", False),
    "timeout": (EndReason.TIMEOUT, "ran past its timeout of 10s", True),
    "cancel": (EndReason.CANCELLED, "cancelled by request", True),
    "stall": (EndReason.STALLED, "no progress for 30s", False),
    "kernel_oom": (EndReason.OOM, "OOM: killed by the kernel's OOM killer", False),
    "server_lost": (EndReason.WORKER_LOST, "the node's fork server died under the job", False),
    "disk_errno": (EndReason.DISK, f"{DISK_FULL} (the job: {ERRNO_28})", False),
    "signal": (EndReason.ERROR, f"exited with code {KILL}", False),
    "exit_code": (EndReason.ERROR, "exited with code 1", False),
    "drain_disk": (EndReason.SUCCEEDED, "", False),
}


@dataclass
class Asked:
    """Which costly facts `decide` asked for."""

    oom: int = 0
    disk: list[str] = field(default_factory=list)


def verdict_of(fired: set[str]) -> Verdict | None:
    """The verdict of the supervisor's watches, in its order, on a tick where `fired` hold."""
    now = 1000.0
    vitals = Vitals(
        now=now,
        started_at=now - (20 if "timeout" in fired else 1),
        last_report_at=now - (60 if "stall" in fired else 1),
        memory=2 * GIB if "memory" in fired else 0,
        peak_memory=0,
    )
    watches: list[Watch] = [
        MemoryWatch(GIB), TimeoutWatch(10.0), CancelWatch(lambda: "cancel" in fired),
        StallWatch(30.0),
    ]
    return first_verdict(watches, vitals)


def ending_of(names: tuple[str, ...], asked: Asked | None = None) -> Ending:
    """A successful attempt's facts with the named endings laid over it."""
    asked = asked if asked is not None else Asked()
    facts: dict[str, Any] = {}
    for name in names:
        facts.update({k: v for k, v in ENDINGS[name].items() if k != "rc"})
    rcs = {ENDINGS[name].get("rc", 0) for name in names} | {0}
    rc = next(code for code in RC_ORDER if code in rcs)
    watches = {ENDINGS[name]["watch"] for name in names if "watch" in ENDINGS[name]}
    rose = facts.get("oom_rose", False)
    full = facts.get("disk_full", False)

    def oom_now() -> int | None:
        asked.oom += 1
        return 4 if rose else 3

    def disk_fault() -> str | None:
        asked.disk.append("checked")
        return DISK_FULL if full else None

    return Ending(
        returncode=rc,
        result=RESULT,
        job_error=facts.get("job_error"),
        superseded=facts.get("superseded", False),
        fenced=facts.get("fenced", False),
        verdict=verdict_of(watches),
        log_disk_error=facts.get("log_disk_error"),
        stopped_for_disk=facts.get("stopped_for_disk", False),
        server_lost=facts.get("server_lost", False),
        oom_kills_before=3,
        oom_kills_now=oom_now,
        disk_fault=disk_fault,
    )


def expected(names: tuple[str, ...]) -> Decision:
    """What the table must decide for these endings, from ORDER and ALONE."""
    winner = min(names, key=ORDER.index)
    reason, error, final = ALONE[winner]
    log_failed = any("log_disk_error" in ENDINGS[n] for n in names)
    not_ours = winner in ("superseded", "fenced")
    faults: tuple[str, ...] = (LOG_FULL,) if log_failed and not not_ours else ()
    if winner == "disk_errno":
        faults += (DISK_FULL,)
    return Decision(
        reason, error, final,
        result=RESULT if reason is EndReason.SUCCEEDED else None,
        disk_faults=faults,
        log_error=LOG_FULL if log_failed and not not_ours and winner != "disk" else None,
    )


def same(got: Decision, want: Decision) -> None:
    assert (got.reason, got.error, got.final, got.result, got.disk_faults, got.log_error) == (
        want.reason, want.error, want.final, want.result, want.disk_faults, want.log_error)


def test_the_order_covers_every_ending() -> None:
    assert sorted(ORDER) == sorted(ENDINGS) == sorted(ALONE)


def test_none_a_job_that_exited_0_with_its_result_succeeded() -> None:
    got = decide(ending_of(()))
    assert (got.reason, got.error, got.final, got.result, got.row) == (
        EndReason.SUCCEEDED, "", False, RESULT, "succeeded")
    assert (got.disk_faults, got.log_error) == ((), None)


def test_none_exit_0_without_a_result_is_an_error() -> None:
    got = decide(Ending(returncode=0))
    assert (got.reason, got.error, got.row) == (EndReason.ERROR, "exited with code 0", "error")


def test_a_job_error_event_is_the_error_text() -> None:
    got = decide(Ending(returncode=1, job_error="ValueError: boom"))
    assert (got.reason, got.error) == (EndReason.ERROR, "ValueError: boom")


@pytest.mark.parametrize("name", list(ENDINGS))
def test_each_ending_alone(name: str) -> None:
    same(decide(ending_of((name,))), expected((name,)))


@pytest.mark.parametrize(
    ("first", "second"), list(itertools.combinations(ENDINGS, 2)),
    ids=[f"{a}+{b}" for a, b in itertools.combinations(ENDINGS, 2)],
)
def test_every_pair_of_competing_endings(first: str, second: str) -> None:
    want = expected((first, second))
    same(decide(ending_of((first, second))), want)
    same(decide(ending_of((second, first))), want)  # the order they were seen in is no matter


def test_a_watch_pair_is_decided_by_the_watch_order() -> None:
    assert decide(ending_of(("cancel", "timeout"))).reason is EndReason.TIMEOUT
    assert decide(ending_of(("stall", "memory"))).reason is EndReason.OOM
    assert decide(ending_of(("stall", "cancel"))).reason is EndReason.CANCELLED


def test_the_costly_facts_are_asked_only_when_their_row_is_reached() -> None:
    asked = Asked()
    decide(ending_of(("cancel", "kernel_oom", "disk_errno"), asked))
    assert (asked.oom, asked.disk) == (0, [])  # the verdict decided first
    decide(ending_of(("kernel_oom", "disk_errno"), asked))
    assert (asked.oom, asked.disk) == (1, [])  # the OOM row decided
    decide(ending_of(("disk_errno",), asked))
    assert asked.disk == ["checked"]  # a disk errno in the job's error: the disk is checked
    decide(ending_of(("exit_code",), asked))
    assert asked.disk == ["checked"]  # no disk errno: the disk is not checked


def test_an_unreadable_oom_counter_is_no_kernel_oom() -> None:
    end = Ending(returncode=KILL, oom_kills_before=None, oom_kills_now=lambda: 9)
    assert decide(end).reason is EndReason.ERROR
    end = Ending(returncode=KILL, oom_kills_before=3, oom_kills_now=lambda: None)
    assert decide(end).reason is EndReason.ERROR


def test_the_table_reads_in_the_documented_order() -> None:
    assert [row for row, _ in outcome.PRECEDENCE] == [
        "superseded", "fenced", "disk", "watch", "succeeded", "kernel_oom", "server_lost",
        "disk_errno", "error"]
