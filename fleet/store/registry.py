"""Node reports in Redis: what each node says it has, holds and uses.

A node's report key carries a TTL refreshed by every heartbeat: its existence is the node's
lease. What is reserved on a node is not taken from the report but summed from the node's
allocation hash, the one record the reserve/finish scripts keep (so it cannot drift).
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from fleet.errors import FleetError
from fleet.resources import RESERVED, Resources
from fleet.store import keys, quarantine, records
from fleet.store.scripts import Script

HISTORY_CAP = 3600  # load samples kept per node (about an hour at one a second)


class NodeIdTaken(FleetError):
    """Another live incarnation holds this node id (two workers started with one id)."""

    def __init__(self, node: str, holder: str) -> None:
        super().__init__(f"node id {node!r} is held by another live worker (incarnation {holder})")
        self.holder = holder


def heartbeat(client: redis.Redis, report: Mapping[str, Any], ttl: float,
              replaces: str | None = None) -> bool:
    """Publish a node's report and renew its lease, in one atomic step. True when the lease
    was continued, False when it had expired (the master may have re-placed the node's jobs).

    The lease belongs to one incarnation: while another live worker holds the id (its report
    has not expired), this raises NodeIdTaken instead of flip-flopping the node between two
    processes, each of which would look like the other's replacement. `replaces`: an earlier
    incarnation of this same worker, which this one takes over even while its lease holds.
    """
    node = report["node"]
    report = {**report, "time": report.get("time", time.time())}  # readers require it
    capacity = Resources.parse(report["capacity"]).to_wire()
    sample = {"time": report.get("time", time.time()), "usage": report.get("usage", {}),
              "reserved": report.get("reserved", {})}
    ok, holder, *continued = _script(client)(
        keys={"report": keys.node(node), "nodes": keys.NODES,
              "history": keys.node_history(node)},
        args={"node": node, "incarnation": report["incarnation"],
              "capacity": json.dumps(capacity), "report": json.dumps(report),
              "ttl_ms": int(ttl * 1000), "sample": json.dumps(sample),
              "history_cap": HISTORY_CAP, "replaces": replaces or ""},
    )
    if not ok:
        raise NodeIdTaken(node, keys.decode(holder))
    return bool(continued and continued[0])


#: Each client's registered heartbeat script, kept beside the client rather than written onto
#: it (redis-py's object is not ours); weak, so a closed client takes its entry with it.
_HEARTBEATS: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


def _script(client: redis.Redis) -> Script:
    """heartbeat.lua registered on `client` (once: a node heartbeats every second)."""
    script = _HEARTBEATS.get(client)
    if script is None:
        script = _HEARTBEATS[client] = Script(client, "heartbeat", prelude=False)
    return script


def allocations(client: redis.Redis, node: str) -> dict[str, dict[str, Any]]:
    """Job id -> reservation ({attempt, incarnation, and the wire amounts}) on `node`: the
    well-formed ones (the master repairs the others; a worker only reports the sum)."""
    try:
        raw = client.hgetall(keys.node_alloc(node))
    except redis.exceptions.ResponseError as exc:  # not a hash: the master moves it aside
        quarantine.note("alloc", keys.node_alloc(node), exc)
        return {}
    return decode_allocations(node, raw)[0]


def decode_allocations(node: str, raw: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(well-formed entries, job ids of the malformed ones) of an allocation hash as read;
    `raw` may be the error Redis answered (a key of the wrong type: ["*"] is bad)."""
    if isinstance(raw, Exception):
        quarantine.note("alloc", keys.node_alloc(node), raw)
        return {}, ["*"]
    good: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for k, v in raw.items():
        job = keys.decode(k)
        try:
            good[job] = records.alloc_entry(v)
        except records.BadRecord as exc:
            quarantine.note("alloc", f"{keys.node_alloc(node)}/{job[:100]}", exc.args[0])
            bad.append(job)
    return good, bad


def reserved_of(allocs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """What `allocs` hold in all, in a report's units: `{"cpus": 1.5, "memory": ..., "gpus": 0}`."""
    held = Resources.total(Resources.from_wire(a) for a in allocs.values())
    return held.units(RESERVED)


def known_nodes(client: redis.Redis) -> list[str]:
    try:
        return names(client.smembers(keys.NODES))
    except redis.exceptions.ResponseError as exc:  # not a set: the master moves it aside
        quarantine.note("nodes", keys.NODES, exc)
        return []


def names(members: Iterable[bytes | str]) -> list[str]:
    """The node names of the NODES set's members, in order (a name no node could have, over
    records.MAX_ID characters, is skipped)."""
    out = []
    for member in members:
        name = keys.decode(member)
        if 0 < len(name) <= records.MAX_ID:
            out.append(name)
        else:
            quarantine.note("nodes", keys.NODES, f"a member of {len(name)} characters")
    return sorted(out)


def node_states(client: redis.Redis) -> list[dict[str, Any]]:
    """Every known node: its last report (None when its lease expired), allocations, drain flag.

    One pipelined round trip for all nodes (after one for their names).
    """
    nodes = known_nodes(client)
    pipe = client.pipeline(transaction=False)
    read_states(pipe, nodes)
    return states_from(nodes, pipe.execute(raise_on_error=False))


READS_PER_NODE = 3  # replies `read_states` queues per node: report, allocations, drain flag


def read_states(pipe: redis.client.Pipeline, nodes: Sequence[str]) -> None:
    """Queue the reads `states_from` decodes, on a pipeline that may carry other reads too
    (after READS_PER_NODE × len(nodes) replies)."""
    for node in nodes:
        pipe.hmget(keys.node(node), "report")
        pipe.hgetall(keys.node_alloc(node))
        pipe.exists(keys.node_drain(node))


def states_from(nodes: Sequence[str], raw: Sequence[Any]) -> list[dict[str, Any]]:
    """The states of `nodes` from the replies to `read_states` (READS_PER_NODE each, in order;
    a reply may be the error Redis answered, for a key of the wrong type).

    Each state: `report` (None when the node's lease lapsed or its report is unreadable),
    `alloc` (the well-formed reservations), `bad_alloc` (job ids of malformed ones; "*" when
    the hash itself is unreadable), `draining`, and `unreadable` (why the report could not be
    read, else None): a node with an unreadable report is neither placed on nor declared dead.
    """
    states = []
    for i, node in enumerate(nodes):
        report_raw, alloc_raw, drain = raw[READS_PER_NODE * i : READS_PER_NODE * (i + 1)]
        allocs, bad_alloc = decode_allocations(node, alloc_raw)
        report, unreadable = _report(node, report_raw)
        draining = not isinstance(drain, Exception) and bool(drain)
        if report is not None:
            report["reserved"] = reserved_of(allocs)
            report["draining"] = draining or bool(report.get("draining"))
        states.append({"node": node, "report": report, "alloc": allocs, "bad_alloc": bad_alloc,
                       "draining": draining, "unreadable": unreadable})
    return states


def _report(node: str, raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None), (None, None) when there is none (the lease lapsed), or (None, why)."""
    if isinstance(raw, Exception):
        quarantine.note("node_report", keys.node(node), raw)
        return None, str(raw)
    (value,) = raw
    if not value:
        return None, None
    try:
        return records.node_report(value, node), None
    except records.BadRecord as exc:
        quarantine.note("node_report", keys.node(node), exc.args[0])
        return None, exc.args[0]


def live_reports(client: redis.Redis) -> list[dict[str, Any]]:
    """Reports of the nodes whose lease holds, with `reserved` summed from allocations."""
    return [s["report"] for s in node_states(client) if s["report"] is not None]


def wait_for_nodes(client: redis.Redis, nodes: set[str], timeout: float) -> set[str]:
    """Wait until every node in `nodes` heartbeats; returns the ones still missing at timeout
    (empty when all came). Drivers turn a non-empty answer into their own error."""
    deadline = time.monotonic() + timeout
    while True:
        missing = nodes - {r["node"] for r in live_reports(client)}
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def set_drain(client: redis.Redis, node: str, on: bool = True) -> None:
    if on:
        client.set(keys.node_drain(node), "1")
    else:
        client.delete(keys.node_drain(node))


def is_draining(client: redis.Redis, node: str) -> bool:
    return bool(client.exists(keys.node_drain(node)))


def deregister(client: redis.Redis, node: str, incarnation: str) -> None:
    """A node leaving cleanly: drop its lease and name, unless a newer incarnation took over."""
    try:
        holder = client.hget(keys.node(node), "incarnation")
    except redis.exceptions.ResponseError:  # not a hash: not another incarnation's either
        holder = None
    if keys.decode(holder or b"") not in ("", incarnation):
        return
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node(node), keys.node_drain(node))
    pipe.srem(keys.NODES, node)
    _execute_all(pipe)


def forget(client: redis.Redis, node: str) -> None:
    """Drop a dead node with nothing left on it (the master, after requeueing its jobs)."""
    pipe = client.pipeline(transaction=True)
    pipe.srem(keys.NODES, node)
    pipe.delete(keys.node_drain(node), keys.node_alloc(node), keys.node_queue(node))
    _execute_all(pipe)


def _execute_all(pipe: redis.client.Pipeline) -> None:
    """Run a MULTI block whose commands all run even when one fails (NODES of the wrong type:
    the master moves it aside); the failure is noted, not raised."""
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, redis.exceptions.ResponseError):
            quarantine.note("nodes", keys.NODES, reply)


def history(client: redis.Redis, node: str) -> list[dict[str, Any]]:
    """The node's well-formed load samples, oldest first."""
    try:
        raw = client.lrange(keys.node_history(node), 0, -1)
    except redis.exceptions.ResponseError as exc:
        quarantine.note("history", keys.node_history(node), exc)
        return []
    samples = []
    for v in raw:
        try:
            samples.append(records.history_sample(v))
        except records.BadRecord as exc:
            quarantine.note("history", keys.node_history(node), exc.args[0])
    return samples

