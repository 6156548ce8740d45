"""A leader lease in Redis: one master acts at a time; a standby takes over when it lapses.

The holder renews well inside the TTL; renewal and release check the holder's id in one Lua
step, so a master that stalled past its lease can never renew someone else's. Each time the
lease is held, the same step stamps `seen_key` with Redis's own clock: how long no master has
held the lease is then measured on one clock, whatever the clocks of the readers.
"""

from __future__ import annotations

import redis

from fleet.store import records

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return 0
end
if KEYS[2] then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%d.%06d', tonumber(t[1]), tonumber(t[2])))
end
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl: float,
                 seen_key: str | None = None) -> None:
        self.r, self.key, self.holder, self.ttl_ms = client, key, holder, int(ttl * 1000)
        self.seen_key = seen_key
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Hold the lease after this call? Renews it when we hold it already. Raises redis's
        ResponseError when the key holds another type (see `foreign`)."""
        lease_keys = [self.key] if self.seen_key is None else [self.key, self.seen_key]
        return bool(self._acquire(keys=lease_keys, args=[self.holder, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])

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
