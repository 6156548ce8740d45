"""The local driver: an embedded fleet on this machine, no Docker needed.

Redis (password, loopback, append-only file), the master, N worker nodes and Flower run as
background processes whose pids and URLs go to the state file under FLEET_HOME. Each node is
confined as a node: pinned to its own cores where the machine has enough, offering the memory
it was given (each job's memory is watched against what it reserved).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import redis

from fleet import registry
from fleet.drivers.base import NodeShape, UpResult
from fleet.errors import FleetError
from fleet.private import private_dir
from fleet.redis_server import free_port, new_server
from fleet.scaling import cores_for, node_index, plan_scale
from fleet.settings import Settings, read_state, write_state
from fleet.units import format_cpus

STOP_GRACE_S = 15.0


class LocalDriver:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.logs = self.home / "logs"
        self.procs: dict[int, subprocess.Popen] = {}  # children of this process, to reap

    # -- up / down ---------------------------------------------------------------------------
    def up(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult:
        state = read_state(self.settings)
        if state and _alive(state.get("pids", {}).get("redis")):
            raise FleetError(f"a fleet is already running (state in {self.settings.state_file}); "
                             "`fleet down` first")
        private_dir(self.logs, tighten=[self.home])
        server = new_server(self.home / "redis", binary=self.settings.redis_server)
        server.start()
        assert server.process is not None
        state = {
            "driver": self.name,
            "redis_url": server.url,
            "producer_url": server.producer_url,
            "no_producer": server.no_producer,  # why there is no producer_url, if there is not
            "pids": {"redis": server.process.pid, "nodes": {}},
            "node_shape": {"cpus": shape.cpus, "memory": shape.memory},
            "started_at": time.time(),
        }
        write_state(self.settings, state)  # from here on, `fleet down` can clean up
        state["pids"]["master"] = self.start_master(server.url)
        if flower:
            state["pids"]["flower"], fields = self._start_flower(server.url)
            state.update(fields)
            port = free_port()  # fleet's own Prometheus metrics, beside Flower's
            state["pids"]["exporter"] = self._spawn("exporter", [
                sys.executable, "-m", "fleet", "exporter", f"--port={port}"], server.url)
            state["exporter_url"] = f"http://127.0.0.1:{port}/metrics"
        write_state(self.settings, state)
        nodes = [f"node-{i}" for i in range(1, workers + 1)]
        for node in nodes:
            state["pids"]["nodes"][node] = self.start_node(node, shape, server.url)
        write_state(self.settings, state)
        self.wait_for_nodes(set(nodes), timeout=60)
        return UpResult(server.url, state.get("flower_url"), state.get("flower_user"),
                        state.get("flower_password_file"), tuple(nodes))

    def down(self) -> None:
        state = read_state(self.settings)
        if not state:
            return
        pids: dict[str, Any] = state.get("pids", {})
        groups = [list(pids.get("nodes", {}).values()), [pids.get("master"), pids.get("flower"),
                                                    pids.get("exporter")],
                  [pids.get("redis")]]
        for group in groups:
            _stop_all([p for p in group if p], STOP_GRACE_S)
        self.settings.state_file.unlink(missing_ok=True)

    # -- scale -------------------------------------------------------------------------------
    def scale(self, target: int, *, wait: float | None = None) -> tuple[list[str], list[str]]:
        state = self._state()
        url = state["redis_url"]
        client = redis.Redis.from_url(url)
        procs: dict[str, int] = state["pids"]["nodes"]
        reports = {s["node"]: s for s in registry.node_states(client)}
        observed = {
            node: len((reports.get(node) or {}).get("alloc", {}))
            for node, pid in procs.items()
            if _alive(pid) and not (reports.get(node) or {}).get("draining")
        }
        plan = plan_scale(target, observed)
        shape = NodeShape(**state["node_shape"])
        for node in plan.add:
            procs[node] = self.start_node(node, shape, url)
        for node in plan.remove:
            registry.set_drain(client, node)
        state["pids"]["nodes"] = {n: p for n, p in procs.items() if _alive(p)}
        write_state(self.settings, state)
        if wait is not None:
            self.wait_for_nodes(set(plan.add), timeout=wait, client=client)
            _wait_exit([procs[n] for n in plan.remove], wait)
        return list(plan.add), list(plan.remove)

    def wait_for_nodes(
        self, nodes: set[str], timeout: float, client: redis.Redis | None = None
    ) -> None:
        client = client or redis.Redis.from_url(self._state()["redis_url"])
        missing = registry.wait_for_nodes(client, nodes, timeout)
        if missing:
            raise FleetError(f"nodes not heartbeating after {timeout:g}s: "
                             f"{', '.join(sorted(missing))} (logs in {self.logs})")

    # -- processes ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = read_state(self.settings)
        if not state:
            raise FleetError("no fleet is running here; start one with `fleet up`")
        return state

    def _spawn(self, name: str, argv: list[str], url: str) -> int:
        private_dir(self.logs, tighten=[self.home])
        env = {**os.environ, **self.settings.to_env(), "FLEET_REDIS_URL": url,
               "FLEET_HOME": str(self.home)}
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[proc.pid] = proc
        return proc.pid

    def start_master(self, url: str) -> int:
        return self._spawn("master", [sys.executable, "-m", "fleet", "master"], url)

    def start_node(
        self, node: str, shape: NodeShape, url: str, cores: list[int] | None = None
    ) -> int:
        """Start worker node `node` pinned to `cores` (default: its own share of this machine)."""
        if cores is None:
            cores = cores_for(node_index(node) or 1, shape.cpus, sorted(os.sched_getaffinity(0)))
        argv = [
            sys.executable, "-m", "workers.main", "--node-id", node,
            "--cpus", format_cpus(shape.cpus), "--memory", str(int(shape.memory)),
            "--cpuset", ",".join(map(str, cores)), "--cgroup",
        ]
        return self._spawn(node, argv, url)

    def _start_flower(self, url: str) -> tuple[int, dict[str, Any]]:
        """Flower with basic auth from a generated secret (0600 file): never open by default."""
        port = free_port()
        password = secrets.token_urlsafe(18)
        secret = self.home / "flower.password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
        pid = self._spawn("flower", [
            sys.executable, "-m", "celery", "--broker", url, "flower",
            "--address=127.0.0.1", f"--port={port}", f"--basic-auth=admin:{password}",
        ], url)
        return pid, {"flower_url": f"http://127.0.0.1:{port}", "flower_user": "admin",
                     "flower_password_file": str(secret)}


def stop_children(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM processes this process started, then SIGKILL the process group of any that
    outlive `grace` (a worker's warm shutdown waits for its jobs)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_exit(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _stop_all(pids: list[int], grace: float) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in _wait_exit(pids, grace):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

