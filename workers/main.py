"""`python -m workers.main` (what `fleet worker` runs): one node = agent + Celery worker.

The Celery worker consumes only this node's queue, with a thread pool (each task only
supervises a job process) and prefetch 1. The agent heartbeats from a thread beside it; the
first heartbeat is published before the worker consumes, so the master can place on it at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid

import redis

from fleet.broker import make_app
from fleet.errors import FleetError
from fleet.listen import joined
from fleet.settings import Settings
from fleet.statefile import redis_url
from fleet.store import keys, published, registry
from fleet.units import parse_memory
from workers import tasks, transport
from workers.attempt.supervisor import Supervisor
from workers.node.agent import Agent
from workers.node.capacity import read_capacity
from workers.node.confine import confine
from workers.node.cores import Pinning


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fleet worker", description="Run one fleet node.")
    p.add_argument("--node-id", default=os.environ.get("FLEET_NODE_ID") or socket.gethostname())
    p.add_argument("--cpus", type=float, default=None, help="CPUs this node offers (≤ its limit)")
    p.add_argument("--memory", default=None, help="memory this node offers, e.g. 2Gi")
    p.add_argument("--cpuset", default=None, help="cores to pin the node to, e.g. 0-1 or 2,3")
    p.add_argument("--label", action="append", default=[], help="node label key=value")
    p.add_argument("--concurrency", type=int, default=32, help="jobs the node may run at once")
    p.add_argument("--cgroup", action="store_true",
                   help="confine the node in cgroups of its own (cpu quota, memory limit) if writable")
    p.add_argument("--loglevel", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.loglevel, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from workers.node.parsing import parse_cpuset

    if args.cpuset:
        os.sched_setaffinity(0, parse_cpuset(args.cpuset))
    try:
        settings = joined(Settings())  # FLEET_JOIN: the kit `fleet up --listen` wrote
    except FleetError as exc:  # a bad FLEET_* variable: one line, not a traceback
        logging.getLogger("fleet.worker").critical("%s", exc)
        return 2
    url = redis_url(settings)
    # A cut connection must fail the heartbeat, not hang it: past the lease the node's jobs
    # are fenced anyway, and the next heartbeat must be able to try again.
    timeout = max(1.0, settings.heartbeat_ttl)
    client = redis.Redis.from_url(url, health_check_interval=10, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)
    memory = parse_memory(args.memory) if args.memory else None
    if args.cgroup:
        cgroups = confine(args.node_id, args.cpus, memory)
        logging.getLogger("fleet.worker").info("cgroups: %s", cgroups or "not writable")
    capacity = read_capacity(configured_cpus=args.cpus, configured_memory=memory)
    node = args.node_id
    incarnation = uuid.uuid4().hex[:12]
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    pinning = Pinning(capacity.cpuset, cpus=capacity.cpus)
    supervisor = Supervisor(settings, client, node, incarnation, pinning)
    agent = Agent(
        settings, client, supervisor, capacity, labels=labels,
        on_stop=lambda: os.kill(os.getpid(), signal.SIGTERM),  # Celery's warm shutdown
    )
    try:
        agent.join()
    except FleetError as exc:
        logging.getLogger("fleet.worker").critical("%s", exc)
        return 2
    supervisor.start()  # the fork server, in this node's cgroups, before any job
    stop = threading.Event()
    beat = threading.Thread(target=agent.run, args=(stop,), daemon=True, name="heartbeat")
    beat.start()
    transport.install()
    app = make_app(published.for_node(client, settings), url)  # the fleet's longest job
    app.conf.worker_consumer = "workers.consumer:DeadLetterConsumer"
    tasks.register(app, supervisor)
    try:
        app.worker_main([
            "worker", "--pool", "threads", "--concurrency", str(args.concurrency),
            "--queues", keys.node_queue(node), "--hostname", f"{node}@{socket.gethostname()}",
            "--prefetch-multiplier", "1", "--events", "--without-mingle", "--without-gossip",
            "--loglevel", args.loglevel,
        ])
    finally:
        stop.set()
        beat.join(timeout=5)
        supervisor.close()
        if not registry.allocations(client, node):
            registry.deregister(client, node, supervisor.incarnation)  # it may rejoin anew
    return 0


if __name__ == "__main__":
    sys.exit(main())
