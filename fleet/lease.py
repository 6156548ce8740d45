"""A leader lease in Redis: one master acts at a time; a standby takes over when it lapses.

The holder renews well inside the TTL; renewal and release check the holder's id in one Lua
step, so a master that stalled past its lease can never renew someone else's.
"""

from __future__ import annotations

import redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl: float) -> None:
        self.r, self.key, self.holder, self.ttl_ms = client, key, holder, int(ttl * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Hold the lease after this call? Renews it when we hold it already."""
        if self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]):
            return True
        return bool(self.r.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])

    def holder_now(self) -> str | None:
        value = self.r.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
