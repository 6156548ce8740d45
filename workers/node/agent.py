"""The node agent: tells the registry, about once a second, what this node has, holds and uses.

Capacity is read from the node's own limits (cgroup, cpuset, the driver's configuration), never
the host's when limited. Reserved comes from the node's allocation record, usage is measured.
A node asked to drain takes no new job and, once idle, stops its worker.

Each heartbeat Redis applied renews the node's lease for its jobs too (`workers.attempt.fence`): the
fork server is told until when they may run, counted from when the heartbeat was sent. A node
that beats again only after that deadline (paused, partitioned) rejoins as a new incarnation.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from fleet.errors import FleetError
from fleet.resources import NAMES
from fleet.settings import Settings
from fleet.store import keys, registry
from workers.attempt import fence
from workers.attempt.supervisor import Supervisor
from workers.node.parsing import Capacity
from workers.node.usage import UsageProbe

log = logging.getLogger("fleet.agent")


class Agent:
    def __init__(
        self, settings: Settings, client: redis.Redis, supervisor: Supervisor, capacity: Capacity,
        *, labels: dict[str, str] | None = None, on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.r = client
        self.sup = supervisor
        self.capacity = capacity
        self.labels = labels or {}
        self.on_stop = on_stop
        self.probe = UsageProbe(root_pid=os.getpid())
        self.started_at = time.time()
        self.drained = False
        self.lease_until: float | None = None  # the fence deadline of the last applied beat
        self.replaces: str | None = None  # the incarnation this one took over, until Redis knows

    def rejoin_if_fenced(self, now: float) -> None:
        """Past the fence deadline every job of this incarnation was killed here (and the
        master may have re-placed them): the node rejoins as a new incarnation, so that the
        master ends whatever it still counts on the old one and no task addressed to it runs.
        The old one's lease may still hold in Redis: the next applied beat takes it over."""
        if self.lease_until is None or now < self.lease_until:
            return
        self.replaces, self.sup.incarnation = self.sup.incarnation, uuid.uuid4().hex[:12]
        self.lease_until = None  # once per time cut off: the next deadline is the new one's
        log.warning("node %s was cut off past its lease: it rejoins as incarnation %s (was %s)",
                    self.sup.node, self.sup.incarnation, self.replaces)

    def report(self) -> dict[str, Any]:
        usage = self.probe.sample()
        allocs = registry.allocations(self.r, self.sup.node)
        cap = self.capacity
        return {
            "node": self.sup.node,
            "incarnation": self.sup.incarnation,
            "queue": keys.node_queue(self.sup.node),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "container": os.environ.get("FLEET_CONTAINER_ID") or _container_id(),
            "started_at": self.started_at,
            "time": time.time(),
            # every kind fleet knows, as this node measures it (0: not measured here)
            "capacity": {**{r: getattr(cap, r, 0) for r in NAMES}, "cpuset": list(cap.cpuset)},
            "capacity_source": dict(cap.source),
            "reserved": registry.reserved_of(allocs),
            "usage": {
                # a rate over a short or jittery interval can overshoot: a node cannot use more
                # CPU than it has, and placement must not see a phantom spike
                "cpus": min(usage.cpus, cap.cpus), "memory": usage.memory,
                # busy-GPU equivalent; each sample is {"index", "util" (percent), "memory_used"}
                "gpus": sum(g.get("util") or 0.0 for g in usage.gpus) / 100.0,
            },
            "gpu_usage": [dict(g) for g in usage.gpus],
            "jobs": [
                {"job": j.job_id, "attempt": j.attempt, "cores": list(j.cores), "step": j.step,
                 "pid": j.pid}
                for j in self.sup.running_jobs()
            ],
            "labels": self.labels,
            "draining": registry.is_draining(self.r, self.sup.node),
            # a node that cannot write its artifacts takes no work (the master skips it)
            "healthy": self.sup.disk.reason is None,
            "unhealthy_reason": self.sup.disk.reason,
        }

    def beat(self) -> dict[str, Any]:
        self.sup.disk.recheck()  # while unhealthy: can it write again? (a probe file)
        self.rejoin_if_fenced(time.monotonic())
        report = self.report()
        ttl = self.settings.heartbeat_ttl
        sent = time.monotonic()  # Redis applies it later: the lease lasts ttl past this at least
        continued = registry.heartbeat(self.r, report, ttl, replaces=self.replaces)
        self.lease_until, self.replaces = fence.lease_until(sent, ttl), None
        self.sup.renew_lease(self.lease_until, lapsed=not continued)
        if report["draining"] and not report["jobs"] and not registry.allocations(
            self.r, self.sup.node
        ):
            if not self.drained and self.on_stop is not None:
                log.info("node %s drained; stopping", self.sup.node)
                self.drained = True
                self.on_stop()
        return report

    def join(self) -> dict[str, Any]:
        """The first heartbeat. A worker restarted under the same id waits out its dead
        predecessor's lease (at most one TTL); a live twin is an error, not a takeover."""
        deadline = time.monotonic() + self.settings.heartbeat_ttl + 2 * self.settings.heartbeat_interval
        self.sup.disk.recheck(always=True)  # a node started on a full disk says so at once
        while True:
            try:
                return self.beat()
            except registry.NodeIdTaken as exc:
                if time.monotonic() > deadline:
                    raise FleetError(f"{exc}; start this worker with another --node-id") from None
                time.sleep(0.2)

    def run(self, stop: threading.Event) -> None:
        """Beat until stopped; a Redis outage is logged and waited out."""
        while not stop.wait(self.settings.heartbeat_interval):  # join() made the first beat
            try:
                self.beat()
            except registry.NodeIdTaken as exc:
                log.critical("%s: this worker stops", exc)
                if self.on_stop is not None:
                    self.on_stop()
                return
            except redis.exceptions.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a bug in one beat must not end them all: the node would fence
                log.exception("heartbeat failed")


def _container_id() -> str | None:
    """Docker sets the hostname to the short container id; only trust it inside a container."""
    return socket.gethostname() if os.path.exists("/.dockerenv") else None
