"""Every Redis key and queue name fleet uses is built here, and nowhere else.

`grep` for a key string should find this module only. Keys share the `fleet:` prefix so that one
Redis can be inspected (and ACL'd) by pattern; Celery's own keys (queues, results) keep theirs.
"""

from __future__ import annotations

PREFIX = "fleet"


def decode(value: object) -> str:
    """A key, member or field as Redis returned it (bytes, unless the client decodes) as str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- jobs -----------------------------------------------------------------------------------
JOBS = f"{PREFIX}:jobs"  # zset: job id -> submit time (every job ever accepted)
PENDING = f"{PREFIX}:pending"  # zset: job id -> place in line (pending_score of priority, seq)
PLACING = f"{PREFIX}:placing"  # zset: job id -> reserve time, until the worker claims it
SEQUENCE = f"{PREFIX}:seq"  # counter: submit order, for FIFO inside one priority
WAKE = f"{PREFIX}:wake"  # list: pokes that wake the master at once (capacity freed, job in)
EVENTS = f"{PREFIX}:events"  # stream: one entry per lifecycle event
DEAD_LETTER = f"{PREFIX}:dead-letter"  # list: broker messages refused as malformed
MASTER_LEASE = f"{PREFIX}:master:lease"  # string with TTL: the leading master's id
INTAKES = f"{PREFIX}:intakes"  # set: intake names beyond the built-in ones (fleet.acl.INTAKES)
BAD_RECORDS = f"{PREFIX}:bad-records"  # hash: kind of record -> how many were unusable
SETTINGS = f"{PREFIX}:settings"  # string: the fleet-wide settings as JSON (fleet.store.published)
BUNDLES_USED = f"{PREFIX}:bundles:used"  # hash: bundle hex -> when a job last used it (epoch s)


def intake(name: str) -> str:
    """Stream: requests (submit, cancel) from one producer seat, untrusted until the master
    has validated them. The only key a producer may write; its name says who submitted."""
    return f"{PREFIX}:intake:{name}"


def bundle(hex_digest: str) -> str:
    """String: a code bundle's archive (fleet.bundles.pack), named by the hex of its sha256;
    written once (SET NX) by the master after it checked the digest."""
    return f"{PREFIX}:bundle:{hex_digest}"


def job(job_id: str) -> str:
    """Hash: the job record (spec, state, current attempt, node, placement, result)."""
    return f"{PREFIX}:job:{job_id}"


def job_attempts(job_id: str) -> str:
    """List of JSON attempt records, oldest first."""
    return f"{PREFIX}:job:{job_id}:attempts"


def job_metrics(job_id: str) -> str:
    """List of JSON progress reports, every `ctx.report` of every attempt."""
    return f"{PREFIX}:job:{job_id}:metrics"


def job_cancel(job_id: str) -> str:
    """String flag: set when a cancel was asked; the node's supervisor polls it."""
    return f"{PREFIX}:job:{job_id}:cancel"


def job_logs(job_id: str, attempt: int) -> str:
    """List of captured output lines of one attempt (capped)."""
    return f"{PREFIX}:job:{job_id}:logs:{attempt}"


# -- nodes ----------------------------------------------------------------------------------
NODES = f"{PREFIX}:nodes"  # set: node ids ever seen (reports themselves expire)


def node(node_id: str) -> str:
    """Hash with a TTL: the node's last report. Its existence is the node's lease."""
    return f"{PREFIX}:node:{node_id}"


def node_alloc(node_id: str) -> str:
    """Hash: job id -> JSON reservation on this node. Reserved = the sum of its values."""
    return f"{PREFIX}:node:{node_id}:alloc"


def node_drain(node_id: str) -> str:
    """String flag: the node takes no new job and stops once idle."""
    return f"{PREFIX}:node:{node_id}:drain"


def node_history(node_id: str) -> str:
    """List of JSON load samples (capped), for plots of node load over time."""
    return f"{PREFIX}:node:{node_id}:history"


# -- Celery queues (not under the prefix: they are kombu's list names) ------------------------
def node_queue(node_id: str) -> str:
    """The Celery queue that only node `node_id` consumes."""
    return f"fleet.node.{node_id}"


def node_from_queue(queue: str) -> str | None:
    head = "fleet.node."
    return queue[len(head) :] if queue.startswith(head) else None


# -- what readers found (the master's own bookkeeping) ----------------------------------------
MASTER_SEEN = f"{PREFIX}:master:seen"  # string: when a master last held the lease (epoch s)
BAD_RECORDS = f"{PREFIX}:bad-records"  # hash: record kind -> malformed records found


def quarantined(key: str, stamp_ms: int) -> str:
    """Where a key of the wrong Redis type is moved (with a TTL) for the operator to inspect."""
    return f"{PREFIX}:quarantine:{stamp_ms}:{key}"


MASTER_ERRORS = f"{PREFIX}:master:errors"  # counter: master rounds that failed (and went on)


JOB_SCAN = f"{PREFIX}:job:*"  # SCAN pattern of job records (and their sub-keys)


def job_id_of(key: bytes | str) -> str | None:
    """The job id of a job record's key (`job(id)`), None for any other key (its sub-keys too)."""
    name = decode(key)
    head = f"{PREFIX}:job:"
    rest = name[len(head):] if name.startswith(head) else ""
    return rest if rest and ":" not in rest else None
