"""The local driver: an embedded fleet on this machine, no Docker needed.

`up` starts a keeper (fleet.drivers.keeper), the one process it leaves behind: the keeper starts
the embedded S3 server when the store is `s3` (SeaweedFS under FLEET_HOME/s3: its bucket made,
its URL and endpoint published to the nodes), Redis (password, loopback, append-only file),
the master, N worker nodes, Flower and the exporter as its children, records their pids in the
state file under FLEET_HOME, and restarts the master and the other services (Redis on its
append-only file, S3 on its data with the same ports and keys) when they die. Each node is
confined as a node: pinned to its own cores where the machine has enough, offering the memory it
was given (each job's memory is watched against what it reserved).

No secret is on a command line or in an environment: every process gets the path of a 0600 file
holding the Redis URL (FLEET_REDIS_URL_FILE), the S3 keys' 0600 file
(FLEET_S3_CREDENTIALS_FILE), Flower a 0600 config file with its login.
A lock file held by the keeper makes a second `fleet up` on the same FLEET_HOME fail at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from fleet.drivers import join, sweep
from fleet.drivers.base import NodeShape, UpResult
from fleet.drivers.processes import STOP_GRACE_S, alive, stop_processes, wait_exit
from fleet.drivers.redis_server import RedisServer, free_port
from fleet.drivers.s3_server import EMBEDDED, S3Server, remove_sockets
from fleet.drivers.secret_files import flower_config, service_env, write_secret
from fleet.errors import FleetError
from fleet.private import private_dir
from fleet.scaling import cores_for, node_index, plan_scale
from fleet.settings import Settings
from fleet.statefile import read_state, remove_state, with_recorded_storage, write_state
from fleet.store import peek, published, registry
from fleet.units import format_cpus

FLOWER_USER = "admin"
S3_STOP_GRACE_S = 3.0  # weed never exits on SIGTERM alone (S3Server.stop); it is killed after


class LocalDriver:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.logs = self.home / "logs"
        self.url_file = self.home / "secrets" / "redis.url"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # children of this process, to reap
        self.server: RedisServer | None = None  # the Redis this process started (keeper)
        self.s3: S3Server | None = None  # the embedded S3 server it started, if the store is it
        self.services: dict[str, list[str]] = {}  # argv of each service, to restart it

    # -- up / down ---------------------------------------------------------------------------
    def up(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult:
        """Start the fleet under a keeper; return once its nodes heartbeat (the keeper runs on)."""
        from fleet.drivers import keeper

        lock = self.take_lock()
        try:
            state = read_state(self.settings)
            if state and alive(state.get("pids", {}).get("redis")):
                raise FleetError(f"a fleet is already running (state in "
                                 f"{self.settings.state_file}); `fleet down` first")
            return keeper.start(self.settings, workers, shape, flower=flower, lock_fd=lock)
        finally:
            os.close(lock)  # the keeper holds its own copy for as long as it runs

    def take_lock(self) -> int:
        """An fd holding FLEET_HOME's lock; a one-line error when a fleet holds it already."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.home / "fleet.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FleetError(f"a fleet is starting or running here (FLEET_HOME={self.home}); "
                             "`fleet down` first, or set another FLEET_HOME") from None
        return fd

    def start_fleet(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult:
        """What the keeper runs: Redis, master, Flower, exporter and the nodes, as its children."""
        private_dir(self.logs, tighten=[self.home])
        stored = self.start_storage()  # before anything that reads the published store
        server = join.fleet_server(self.settings, self.home / "redis")  # + FLEET_LISTEN, TLS
        try:
            server.start()
        except FleetError as exc:
            raise FleetError(f"{exc}{_log_tail(server.directory / 'redis.log')}") from None
        assert server.process is not None
        self.server = server
        write_secret(self.url_file, server.url)
        operator = redis.Redis.from_url(server.url)  # before any node or producer reads the store
        published.write(operator, self.settings)
        peek.load(operator)
        state: dict[str, Any] = {
            "driver": self.name,
            "redis_url": server.url,
            "producer_url": server.producer_url,
            "no_producer": server.no_producer,  # why there is no producer_url, if there is not
            "pids": {"keeper": os.getpid(), "redis": server.process.pid, "nodes": {}},
            "node_shape": {"cpus": shape.cpus, "memory": shape.memory},
            "started_at": time.time(),
            **stored,
        }
        if self.s3 is not None and self.s3.process is not None:
            state["pids"]["s3"] = self.s3.process.pid
        write_state(self.settings, state)  # from here on, `fleet down` can clean up
        state["pids"]["master"] = self.start_master(server.url)
        if flower:
            state["pids"]["flower"], fields = self._start_flower(server.url)
            state.update(fields)
            port = free_port()  # fleet's own Prometheus metrics, beside Flower's
            state["pids"]["exporter"] = self._service(
                "exporter", [sys.executable, "-m", "fleet", "exporter", f"--port={port}"],
                server.url)
            state["exporter_url"] = f"http://127.0.0.1:{port}/metrics"
        write_state(self.settings, state)
        nodes = [f"node-{i}" for i in range(1, workers + 1)]
        for node in nodes:
            state["pids"]["nodes"][node] = self.start_node(node, shape, server.url)
        write_state(self.settings, state)
        self.wait_for_nodes(set(nodes), timeout=60)
        join.write_kit(self.settings, server, None if self.s3 is None else self.s3.credentials_file)
        return UpResult(server.url, state.get("flower_url"), state.get("flower_user"),
                        state.get("flower_password_file"), tuple(nodes))

    def start_storage(self) -> dict[str, Any]:
        """With the store `s3`: start the embedded S3 server (data and keys under FLEET_HOME/s3,
        kept across `fleet down`), and point these settings, hence every process started from
        here on and what is published, at it. What the state file records of the store."""
        if self.settings.storage != EMBEDDED:
            return {"storage": self.settings.storage} if self.settings.storage else {}
        self.s3 = join.fleet_s3(self.settings, self.home / "s3").start()
        self.settings = self.settings.model_copy(update=self.s3.fleet_settings())
        return {"storage": self.settings.storage, "s3_endpoint": self.s3.endpoint,
                "s3_credentials_file": str(self.s3.credentials_file),
                **({"s3_ca_file": str(self.s3.tls.ca)} if self.s3.tls else {}),
                "s3_ports": dict(self.s3.ports)}

    def down(self) -> None:
        """Stop the keeper (so nothing is restarted), the recorded processes in order (nodes
        first: their warm shutdown; the stores last), then every other process of this fleet
        still running."""
        state = read_state(self.settings) or {}
        pids: dict[str, Any] = state.get("pids", {})
        groups = [[pids.get("keeper")], list(pids.get("nodes", {}).values()),
                  [pids.get("master"), pids.get("flower"), pids.get("exporter")],
                  [pids.get("redis")]]
        for group in groups:
            stop_processes([p for p in group if p], STOP_GRACE_S)
        if pids.get("s3"):
            stop_processes([pids["s3"]], S3_STOP_GRACE_S)
            remove_sockets(state.get("s3_ports") or {})
        port = sweep.redis_port(state.get("redis_url"))
        for _ in range(3):  # a process may start one more before it stops
            left = sweep.fleet_processes(self.home, port)
            if not left:
                break
            stop_processes(left, STOP_GRACE_S)
        remove_state(self.settings)
        for secret in self.url_file.parent.glob("*"):
            secret.unlink(missing_ok=True)

    # -- scale -------------------------------------------------------------------------------
    def scale(self, target: int, *, wait: float | None = None) -> tuple[list[str], list[str]]:
        with self.locked_state() as state:
            url = state["redis_url"]
            client = redis.Redis.from_url(url)
            procs: dict[str, int] = state["pids"]["nodes"]
            reports = {s["node"]: s for s in registry.node_states(client)}
            observed = {
                node: len((reports.get(node) or {}).get("alloc", {}))
                for node, pid in procs.items()
                if alive(pid) and not (reports.get(node) or {}).get("draining")
            }
            plan = plan_scale(target, observed)
            shape = NodeShape(**state["node_shape"])
            for node in plan.add:
                procs[node] = self.start_node(node, shape, url)
            for node in plan.remove:
                registry.set_drain(client, node)
            state["pids"]["nodes"] = {n: p for n, p in procs.items() if alive(p)}
        if wait is not None:
            self.wait_for_nodes(set(plan.add), timeout=wait, client=client)
            wait_exit([procs[n] for n in plan.remove], wait)
        return list(plan.add), list(plan.remove)

    def wait_for_nodes(
        self, nodes: set[str], timeout: float, client: redis.Redis | None = None
    ) -> None:
        client = client or redis.Redis.from_url(self._state()["redis_url"])
        missing = registry.wait_for_nodes(client, nodes, timeout)
        if missing:
            raise FleetError(f"nodes not heartbeating after {timeout:g}s: "
                             f"{', '.join(sorted(missing))} (logs in {self.logs})")

    @contextlib.contextmanager
    def locked_state(self) -> Iterator[dict[str, Any]]:
        """The state, written back on exit, under a lock: `fleet scale` and the keeper both
        rewrite it, and neither may lose the other's pids."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.home / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._state()
            yield state
            write_state(self.settings, state)
        finally:
            os.close(fd)

    # -- processes ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = read_state(self.settings)
        if not state:
            raise FleetError("no fleet is running here; start one with `fleet up`")
        return state

    def _url_file(self, url: str) -> Path:
        """The 0600 file holding `url`: the fleet's own file, or one of its own for another URL
        (a node reached through a proxy). A file is never rewritten with another URL: a
        process started earlier, or restarted, reads the one it was given."""
        if not self.url_file.is_file():
            write_secret(self.url_file, url)
        if self.url_file.read_text().strip() == url:
            return self.url_file
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        other = self.url_file.with_name(f"redis-{digest}.url")
        if not other.is_file():
            write_secret(other, url)
        return other

    def _spawn(self, name: str, argv: list[str], url: str) -> int:
        """Start `argv` with the path of a 0600 file holding `url`, never the URL itself."""
        private_dir(self.logs, tighten=[self.home])
        # The store `fleet up` recorded: a node `fleet scale` starts gets its keys' file too.
        env = service_env(with_recorded_storage(self.settings), self._url_file(url), self.home)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[proc.pid] = proc
        return proc.pid

    def _service(self, name: str, argv: list[str], url: str) -> int:
        """Spawn a service the keeper restarts on death with the same argv."""
        self.services[name] = argv
        return self._spawn(name, argv, url)

    def restart(self, name: str) -> int:
        """Start service `name` again (the keeper calls this when it died); its new pid."""
        if name == "s3":  # on its data, with the same ports and keys: what nodes were given
            assert self.s3 is not None
            self.s3.process = None
            remove_sockets(self.s3.ports)  # a crashed weed leaves them
            self.s3.start(timeout=60)
            assert self.s3.process is not None
            return self.s3.process.pid
        if name == "redis":
            assert self.server is not None
            self.server.process = None
            try:
                self.server.start(timeout=60)  # the append-only file may take a while
            except FleetError as exc:
                raise FleetError(f"{exc}{_log_tail(self.server.directory / 'redis.log')}") \
                    from None
            assert self.server.process is not None
            self.procs[self.server.process.pid] = self.server.process
            return self.server.process.pid
        assert self.server is not None
        return self._spawn(name, self.services[name], self.server.url)

    def start_master(self, url: str) -> int:
        return self._service("master", [sys.executable, "-m", "fleet", "master"], url)

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
        """Flower with basic auth from a generated secret: never open by default. The password
        is in 0600 files (one for the user to read, Flower's config), not on its argv."""
        port = free_port()
        password = secrets.token_urlsafe(18)
        secret = write_secret(self.home / "flower.password", password)
        conf = write_secret(self.home / "secrets" / "flowerconfig.py",
                            flower_config(FLOWER_USER, password))
        pid = self._service("flower", [
            sys.executable, "-m", "fleet.observe.flower_app", f"--conf={conf}",
            "--address=127.0.0.1", f"--port={port}",
        ], url)
        return pid, {"flower_url": f"http://127.0.0.1:{port}", "flower_user": FLOWER_USER,
                     "flower_password_file": str(secret)}


def _log_tail(path: Any, lines: int = 3) -> str:
    """`; its log (PATH) ends: ...`, the last lines of a log joined on one line, or ''."""
    try:
        tail = [t.strip() for t in path.read_text(errors="replace").splitlines() if t.strip()]
    except OSError:
        return ""
    return f"; its log ({path}) ends: {' | '.join(tail[-lines:])}" if tail else ""
