"""Leading: hold the master lease and run rounds until stopped, whatever the store does meanwhile.

One master acts at a time (the lease, fleet.store.lease); a standby takes over when it lapses.
A store outage is waited out, not fatal; a round that fails (a bug, or a record no check
foresaw) is logged and counted, and the next round starts afresh from what the store holds.
The round itself (`Master.step`) is fleet.master.loop's.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis

from fleet.store import keys, quarantine
from fleet.store.protocol import Lease, Store

log = logging.getLogger("fleet.master")

LEASE_RENEW_S = 1.0  # the lease (settings.master_lease_ttl) is renewed at most this often
ERROR_LOG_EVERY_S = 10.0  # a round that fails logs its traceback at most this often


class Leader:
    """The loop around a master's rounds; subclasses give `step` and `forget_round`."""

    store: Store
    lease: Lease

    def __init__(self) -> None:
        self._leading = False
        self._connected_since: float | None = None
        self._renewed_at = -math.inf
        self._error_logged_at = -math.inf

    def step(self, now: float) -> object:
        raise NotImplementedError

    def forget_round(self) -> None:
        """Drop what a round cached: the next one reads everything anew."""

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Lead or stand by until `stop` is set; Redis outages are waited out, not fatal."""
        self.store.start_doorbell(stop)  # an intake entry wakes the loop below at once
        while not stop.is_set():
            try:
                self.step(time.time())
                self.store.wait_wake(interval)  # until poked (a job arrived or ended)
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError) as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                self._leading = False
                self._connected_since = None
                stop.wait(1.0)
            except Exception as exc:  # a bug, or a record no check foresaw: this round only
                self._round_failed(exc)
                stop.wait(min(1.0, interval))
        if self._leading:
            self.lease.release()

    def _round_failed(self, exc: Exception) -> None:
        """Log (the traceback at most every ERROR_LOG_EVERY_S) and count a failed round; the
        next round starts afresh, from what the store holds."""
        self.forget_round()
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_EVERY_S:
            self._error_logged_at = now
            log.exception("a master round failed; continuing")
        else:
            log.warning("a master round failed: %s: %s", type(exc).__name__, str(exc)[:200])
        self.store.round_failed()

    def _hold_lease(self, now: float) -> bool:
        """Renew the lease if it was renewed over LEASE_RENEW_S ago (it lasts several times
        that); a master that stops renewing loses it to a standby within its TTL."""
        if self._leading and 0 <= now - self._renewed_at < LEASE_RENEW_S:
            return True
        try:
            held = self.lease.acquire()
        except redis.exceptions.ResponseError:
            held = False
        if not held:
            foreign = self.lease.foreign()
            if foreign is not None:  # no master wrote it: it would keep every master out
                quarantine.note("lease", keys.MASTER_LEASE, foreign)
                self.store.quarantine(keys.MASTER_LEASE)
            return False
        self._renewed_at = now
        return True
