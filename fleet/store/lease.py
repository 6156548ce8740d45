"""A leader lease in Redis: one master acts at a time; a standby takes over when it lapses.

The holder renews well inside the TTL; renewal and release check the holder's id in one Lua
step (fleet/store/lua/lease_*.lua), so a master that stalled past its lease can never renew
someone else's. Each time the lease is held, the same step stamps `seen_key` with Redis's own
clock: how long no master has held the lease is then measured on one clock, whatever the
clocks of the readers.
"""

from __future__ import annotations

import redis

from fleet.store import records
from fleet.store.scripts import Script


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl: float,
                 seen_key: str) -> None:
        self.r, self.key, self.holder, self.ttl_ms = client, key, holder, int(ttl * 1000)
        self.seen_key = seen_key
        self._acquire = Script(client, "lease_acquire", prelude=False)
        self._release = Script(client, "lease_release", prelude=False)

    def acquire(self) -> bool:
        """Hold the lease after this call? Renews it when we hold it already. Raises redis's
        ResponseError when the key holds another type (see `foreign`)."""
        return bool(self._acquire(keys={"lease": self.key, "seen": self.seen_key},
                                  args={"holder": self.holder, "ttl_ms": self.ttl_ms}))

    def release(self) -> None:
        self._release(keys={"lease": self.key}, args={"holder": self.holder})

    def foreign(self) -> str | None:
        """Why the lease key was not written by a master (another type, a value no master id
        could be, no TTL or a longer one than masters give), else None: a lease no master
        wrote would keep every master out."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        value, pttl = pipe.execute(raise_on_error=False)
        if isinstance(value, Exception):
            return "not a string"
        if value is None:
            return None
        try:
            records.lease_holder(value)
        except records.BadRecord as exc:
            return str(exc.args[0])
        if isinstance(pttl, int) and (pttl == -1 or pttl > 2 * self.ttl_ms):
            return f"a TTL of {pttl} ms, not a master's {self.ttl_ms}"
        return None
