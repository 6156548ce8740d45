"""Node reports in Redis: what each node says it has, holds and uses.

A node's report key carries a TTL refreshed by every heartbeat: its existence is the node's
lease. What is reserved on a node is not taken from the report but summed from the node's
allocation hash, the one record the reserve/finish scripts keep (so it cannot drift).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import redis

from fleet import keys

HISTORY_CAP = 3600  # load samples kept per node (about an hour at one a second)


class NodeIdTaken(Exception):
    """Another live incarnation holds this node id (two workers started with one id)."""

    def __init__(self, node: str, holder: str) -> None:
        super().__init__(f"node id {node!r} is held by another live worker (incarnation {holder})")
        self.holder = holder


def heartbeat(client: redis.Redis, report: Mapping[str, Any], ttl: float) -> bool:
    """Publish a node's report and renew its lease, in one atomic step. True when the lease
    was continued, False when it had expired (the master may have re-placed the node's jobs).

    The lease belongs to one incarnation: while another live worker holds the id (its report
    has not expired), this raises NodeIdTaken instead of flip-flopping the node between two
    processes, each of which would look like the other's replacement.
    """
    node = report["node"]
    cap = report["capacity"]
    capacity = {"cpus_m": round(cap["cpus"] * 1000), "memory": int(cap["memory"]),
                "gpus": int(cap.get("gpus", 0))}
    sample = {"time": report.get("time", time.time()), "usage": report.get("usage", {}),
              "reserved": report.get("reserved", {})}
    ok, holder, *continued = _script(client)(
        keys=[keys.node(node), keys.NODES, keys.node_history(node)],
        args=[node, report["incarnation"], json.dumps(capacity), json.dumps(report),
              int(ttl * 1000), json.dumps(sample), HISTORY_CAP],
    )
    if not ok:
        raise NodeIdTaken(node, keys.text(holder))
    return bool(continued and continued[0])


def _script(client: redis.Redis) -> Any:
    script = getattr(client, "_fleet_heartbeat", None)
    if script is None:
        source = (resources.files("fleet") / "lua" / "heartbeat.lua").read_text()
        script = client.register_script(source)
        client._fleet_heartbeat = script  # type: ignore[attr-defined]
    return script


def allocations(client: redis.Redis, node: str) -> dict[str, dict[str, Any]]:
    """Job id -> reservation ({attempt, incarnation, cpus_m, memory, gpus}) on `node`."""
    raw = client.hgetall(keys.node_alloc(node))
    return {keys.text(k): json.loads(v) for k, v in raw.items()}


def reserved_of(allocs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {
        "cpus": sum(a.get("cpus_m", 0) for a in allocs.values()) / 1000,
        "memory": sum(a.get("memory", 0) for a in allocs.values()),
        "gpus": sum(a.get("gpus", 0) for a in allocs.values()),
    }


def known_nodes(client: redis.Redis) -> list[str]:
    return names(client.smembers(keys.NODES))


def names(members: Iterable[bytes | str]) -> list[str]:
    """The node names of the NODES set's members, in order."""
    return sorted(keys.text(n) for n in members)


def node_states(client: redis.Redis) -> list[dict[str, Any]]:
    """Every known node: its last report (None when its lease expired), allocations, drain flag.

    One pipelined round trip for all nodes (after one for their names).
    """
    nodes = known_nodes(client)
    pipe = client.pipeline(transaction=False)
    read_states(pipe, nodes)
    return states_from(nodes, pipe.execute())


READS_PER_NODE = 3  # replies `read_states` queues per node: report, allocations, drain flag


def read_states(pipe: redis.client.Pipeline, nodes: Sequence[str]) -> None:
    """Queue the reads `states_from` decodes, on a pipeline that may carry other reads too
    (after READS_PER_NODE × len(nodes) replies)."""
    for node in nodes:
        pipe.hmget(keys.node(node), "report")
        pipe.hgetall(keys.node_alloc(node))
        pipe.exists(keys.node_drain(node))


def states_from(nodes: Sequence[str], raw: Sequence[Any]) -> list[dict[str, Any]]:
    """The states of `nodes` from the replies to `read_states` (READS_PER_NODE each, in order)."""
    states = []
    for i, node in enumerate(nodes):
        (report_raw,), alloc_raw, drain = raw[READS_PER_NODE * i : READS_PER_NODE * (i + 1)]
        allocs = {keys.text(k): json.loads(v) for k, v in alloc_raw.items()}
        report = json.loads(report_raw) if report_raw else None
        if report is not None:
            report["reserved"] = reserved_of(allocs)
            report["draining"] = bool(drain) or bool(report.get("draining"))
        states.append({"node": node, "report": report, "alloc": allocs, "draining": bool(drain)})
    return states


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
    if keys.text(client.hget(keys.node(node), "incarnation") or b"") not in ("", incarnation):
        return
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node(node), keys.node_drain(node))
    pipe.srem(keys.NODES, node)
    pipe.execute()


def forget(client: redis.Redis, node: str) -> None:
    """Drop a dead node with nothing left on it (the master, after requeueing its jobs)."""
    pipe = client.pipeline(transaction=True)
    pipe.srem(keys.NODES, node)
    pipe.delete(keys.node_drain(node), keys.node_alloc(node), keys.node_queue(node))
    pipe.execute()


def history(client: redis.Redis, node: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in client.lrange(keys.node_history(node), 0, -1)]

