"""What a reader does with a malformed record: log it (rate-limited), count it, move it aside.

`fleet.store.records` says whether a record is well formed (pure); this module is the I/O around it.
Every reader in a process notes what it skipped in `found`, a process-wide tally (like a
logger: readers deep in `registry` or `jobstore` need no handle passed down). The master adds
its tally to the `BAD_RECORDS` hash in Redis each round, which the exporter serves as
`fleet_bad_records_total{kind, reader="master"}`; the exporter adds its own as
`reader="exporter"`.

A record is counted once, however many rounds read it: what is noted is (kind, where, reason),
and a record seen again with the same fault is not new.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from fleet.store import keys

log = logging.getLogger("fleet.records")
# Shown where the process configures logging (master, worker, exporter); a CLI read command
# configures none and says nothing on stderr about what it skipped (logging's last resort
# would print every warning there).
log.addHandler(logging.NullHandler())

LOG_EVERY_S = 10.0  # per kind of record: one warning, then a summary of what went unsaid
SEEN_CAP = 10_000  # distinct faults remembered (then forgotten at once: counts may repeat)
QUARANTINE_TTL_S = 7 * 24 * 3600  # a moved-aside key is kept this long for the operator


class Found:
    """A process's tally of malformed records (thread-safe: the exporter scrapes in threads)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._unflushed: dict[str, int] = {}
        self._seen: set[tuple[str, str, str]] = set()
        self._logged_at: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, where: str, reason: str) -> bool:
        """Count a malformed record of `kind` at `where` (a key, or key/field); True when new."""
        fault = (kind, where[:300], reason[:300])
        with self._lock:
            if fault in self._seen:
                return False
            if len(self._seen) >= SEEN_CAP:
                self._seen.clear()
            self._seen.add(fault)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self._unflushed[kind] = self._unflushed.get(kind, 0) + 1
            now = time.monotonic()
            if now - self._logged_at.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
                self._unsaid[kind] = self._unsaid.get(kind, 0) + 1
                return True
            self._logged_at[kind] = now
            unsaid = self._unsaid.pop(kind, 0)
        more = f" ({unsaid} more {kind} records skipped since the last warning)" if unsaid else ""
        log.warning("skipping a malformed %s record at %s: %s%s", kind, where[:200], reason[:200],
                    more)
        return True

    def flush(self, client: redis.Redis) -> None:
        """Add what was found since the last flush to the BAD_RECORDS hash (the master's)."""
        with self._lock:
            pending, self._unflushed = self._unflushed, {}
        if not pending:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for kind, n in pending.items():
                pipe.hincrby(keys.BAD_RECORDS, kind, n)
            pipe.execute()
        except redis.exceptions.ResponseError:  # the hash itself is of the wrong type
            quarantine_key(client, keys.BAD_RECORDS)
        except redis.exceptions.RedisError:
            with self._lock:  # try again next time
                for kind, n in pending.items():
                    self._unflushed[kind] = self._unflushed.get(kind, 0) + n


found = Found()


def note(kind: str, where: str, reason: str | BaseException) -> bool:
    return found.note(kind, where, str(reason))


def quarantine_key(client: redis.Redis, key: str) -> str | None:
    """Move `key` aside (renamed, with a TTL) so the fleet can recreate it; the new name, or
    None when the key was gone already."""
    target = keys.quarantined(key, int(time.time() * 1000))
    pipe = client.pipeline(transaction=True)
    pipe.rename(key, target)
    pipe.expire(target, QUARANTINE_TTL_S)
    try:
        pipe.execute()
    except redis.exceptions.ResponseError:  # no such key: someone fixed it first
        return None
    log.warning("moved %s aside to %s (wrong type or not the fleet's)", key, target)
    return target


def wrong_types(client: redis.Redis, expected: dict[str, str]) -> list[str]:
    """The keys of `expected` (key -> Redis type) that exist with another type."""
    pipe = client.pipeline(transaction=False)
    for key in expected:
        pipe.type(key)
    found_types = [keys.decode(t) for t in pipe.execute()]
    return [k for k, t in zip(expected, found_types, strict=True) if t not in ("none", expected[k])]


def counts_in_redis(client: redis.Redis) -> dict[str, int]:
    """The master's tally (BAD_RECORDS), the malformed parts of it skipped."""
    try:
        raw: Any = client.hgetall(keys.BAD_RECORDS)
    except redis.exceptions.ResponseError:
        return {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        try:
            out[keys.decode(k)[:100]] = max(0, int(keys.decode(v)))
        except ValueError:
            continue
    return out
