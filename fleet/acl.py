"""Redis ACL users per role, so a leaked credential gives away as little as it can.

- The default user (the password `fleet up` generates) is the operator's, the master's and
  the nodes' (see SECURITY.md for why nodes share it).
- `producer`: reads job and node records, and appends requests (submit, cancel) to its own
  intake stream, `fleet:intake:default`. Nothing else: no script of its own, no write to any
  fleet record. It may call the fleet's read-only function (FCALL_RO of fleet.store.peek's,
  flagged no-writes, which Redis refuses to let write), so that reading its intake never
  hands it a bundle's bytes; loading a function is the operator's.

A Lua script or function runs with its caller's ACL, commands included, so "may run only the
fleet's scripts" would be no boundary: whatever a producer's script may write, the producer may
write directly. The boundary is the intake instead: the master reads every intake as untrusted
input, validates each entry and writes the fleet's records itself (fleet.master.intake); who
submitted is the intake the entry came from. Read-only key patterns (`%R~`) need ACL selectors:
Redis >= 7 or Valkey. A server without them gets no producer user at all, never a weak one.
"""

from __future__ import annotations

from fleet.store import keys

PRODUCER = "producer"
SELECTORS_SINCE = (7, 0)  # Redis version with read-only / write-only key patterns (%R~, %W~)

OPERATOR_INTAKE = "operator"  # the default user's Client (operator, scripts on the fleet's host)
PRODUCER_INTAKE = "default"  # the `producer` user's: team `default`
INTAKES = (OPERATOR_INTAKE, PRODUCER_INTAKE)  # always read; more are named in keys.INTAKES

# What a producer's Client reads: job records and their attempts, metrics, logs and cancel
# flags (all under fleet:job:*), the job index, the line, events, nodes, the master's lease,
# whether a code bundle is stored already (so that it is sent once), and the fleet's published
# settings (fleet.store.published: a submit is checked against what the nodes will check).
PRODUCER_READS = (keys.job("*"), keys.JOBS, keys.PENDING, keys.EVENTS, keys.MASTER_LEASE,
                  keys.MASTER_SEEN, keys.node("*"), keys.NODES, keys.bundle("*"), keys.SETTINGS)
READ_COMMANDS = ("get", "exists", "hget", "hmget", "hgetall", "hlen", "smembers", "scard",
                 "zrange", "zrevrange", "zrangebyscore", "zscore", "zcard", "lrange", "llen",
                 "lindex", "xrange", "xrevrange", "xread", "xlen", "time", "fcall_ro")
# What a client library sends on connecting: `+@connection` would also grant CLIENT KILL.
CONNECTION_COMMANDS = ("auth", "hello", "ping", "echo", "select", "reset", "quit",
                       "client|setname", "client|getname", "client|id")  # no setinfo: 7.2+


def producer_rules(intake: str = PRODUCER_INTAKE) -> list[str]:
    """Read-only on the fleet's records, append-only to `intake`. Needs ACL selectors."""
    return [
        "resetkeys", "resetchannels",
        *(f"%R~{pattern}" for pattern in PRODUCER_READS),
        f"~{keys.intake(intake)}",  # read (to find its own requests) and append
        "-@all",
        *(f"+{command}" for command in (*CONNECTION_COMMANDS, *READ_COMMANDS)),
        "+xadd",
    ]


def intake_of(user: str | None) -> str:
    """The intake a Redis user's requests go to: the default user's is the operator's."""
    if user in (None, "", "default"):
        return OPERATOR_INTAKE
    return PRODUCER_INTAKE if user == PRODUCER else user


def user_line(name: str, password: str, rules: list[str]) -> str:
    """One `user` directive of redis.conf."""
    return " ".join(["user", name, "on", f">{password}", *rules])
