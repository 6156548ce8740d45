"""The lease arithmetic a node fences its jobs by (`workers.attempt.fence`): plain numbers, no clock."""

from __future__ import annotations

import time

import pytest

from workers.attempt import fence
from workers.attempt.fence import Lease, SharedDeadline


def test_a_heartbeat_keeps_jobs_alive_for_less_than_the_ttl_counted_from_its_send() -> None:
    until = fence.lease_until(sent=100.0, ttl=3.0)
    assert 100.0 < until < 103.0  # Redis keeps the lease ≥ ttl past the send: margin to kill
    assert until == pytest.approx(100.0 + fence.FENCE_FRACTION * 3.0)


def test_without_a_renewal_there_is_no_lease() -> None:
    assert Lease().expired(now=0.0)


def test_a_continued_renewal_extends_and_never_moves_the_deadline_back() -> None:
    lease = Lease()
    assert lease.renew(until=10.0, lapsed=True, now=1.0)  # the first: kill (there is nothing)
    assert not lease.renew(until=12.0, lapsed=False, now=2.0)
    assert lease.until == 12.0
    assert not lease.renew(until=11.0, lapsed=False, now=3.0)  # a stale one, late
    assert lease.until == 12.0 and not lease.expired(now=11.9) and lease.expired(now=12.0)


def test_a_lapsed_lease_kills_the_jobs_even_with_time_left() -> None:
    """Redis let the lease expire (the master may have re-placed the jobs): the deadline the
    node still had counts for nothing."""
    lease = Lease(until=50.0)
    assert lease.renew(until=60.0, lapsed=True, now=20.0)
    assert lease.until == 60.0


def test_a_renewal_after_the_deadline_passed_here_kills_first() -> None:
    """A whole node resumed from SIGSTOP: the renewal it sends then must not revive its jobs."""
    lease = Lease(until=10.0)
    assert lease.renew(until=45.0, lapsed=False, now=40.0)
    assert not lease.expired(now=41.0)  # new jobs may start


def test_the_server_wakes_at_the_deadline() -> None:
    lease = Lease(until=10.0)
    assert lease.wake_in(now=9.5, idle=1.0) == pytest.approx(0.5)
    assert lease.wake_in(now=5.0, idle=1.0) == 1.0
    assert lease.wake_in(now=11.0, idle=1.0) == 1.0  # nothing to wait for


def test_the_shared_deadline_reads_what_was_set() -> None:
    page = SharedDeadline()
    assert page.passed()  # nothing set: no lease
    page.set(time.monotonic() + 3600)
    assert not page.passed() and page.left() > 0
    page.set(float("inf"))
    assert not page.passed()
    page.set(float("-inf"))
    assert page.passed() and page.left() < 0
