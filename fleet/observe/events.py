"""The fleet's lifecycle events: the `fleet:events` stream read, decoded and shown.

The Lua steps append one entry per event in the same atomic step as the change they record
(`fleet/store/lua/`): submitted, placed (node, attempt), started (node, attempt), resumed (attempt,
step), retrying (attempt, reason), cancelling, finished (state, reason). An event's JSON shape is
documented in docs/watching.md; fields are only ever added.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from fleet.states import EndReason
from fleet.store import keys, quarantine, records

INT_FIELDS = ("attempt", "step")


def decode_event(
    entry_id: bytes | str, fields: Mapping[str, str] | Mapping[bytes | str, bytes | str],
) -> dict[str, Any]:
    """A stream entry as the documented JSON object: {id, time, event, job, ...fields}."""
    event: dict[str, Any] = {"id": keys.decode(entry_id)}
    for k, v in fields.items():
        event[keys.decode(k)] = keys.decode(v)
    try:
        event["time"] = records.number("event", "time", event.get("time") or 0.0, 0.0, 1e11,
                                       text_ok=True)
    except records.BadRecord as exc:  # an entry the fleet did not write: shown at time 0
        quarantine.note("event", f"{keys.EVENTS}/{event['id']}", exc.args[0])
        event["time"] = 0.0
    for name in INT_FIELDS:
        if name in event:
            try:
                event[name] = int(float(event[name]))
            except ValueError:
                pass
    return event


def read_events(
    client: redis.Redis, *, job: str | None = None, limit: int | None = None,
) -> list[dict[str, Any]]:
    """Past events, oldest first: the last `limit` (all when None), of one job when given."""
    raw: Any  # redis-py's stubs type stream replies loosely
    if job is None and limit is not None:
        newest: Any = client.xrevrange(keys.EVENTS, count=limit)
        raw = list(reversed(newest))
    else:
        raw = client.xrange(keys.EVENTS)
    events = [decode_event(i, f) for i, f in raw]
    if job is not None:
        events = [e for e in events if e.get("job") == job]
        if limit is not None:
            events = events[-limit:]
    return events


def event_line(event: Mapping[str, Any]) -> str:
    """One human line: `12:00:01.250 digits-torch-1a2b3c4d placed node=node-1 attempt=1`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    stamp += f".{int((event['time'] % 1) * 1000):03d}"
    name = event.get("event", "?")
    if name == "retrying" and _lost(event.get("reason")):
        name = "retrying (node lost)"
    extra = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("id", "time", "event", "job")
    )
    return f"{stamp} {event.get('job', '-')} {name}" + (f" {extra}" if extra else "")


def _lost(reason: object) -> bool:
    """Whether a retry's reason is the infrastructure's fault (a node or supervisor gone)."""
    try:
        return EndReason(reason).infrastructure
    except ValueError:
        return False

