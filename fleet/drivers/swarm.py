"""The swarm driver: the compose.yaml stack on a Docker Swarm, for fleets of more than one machine.

`up` runs `docker stack deploy -c compose.yaml <stack>` (the SDK has no stacks; the stack's
secrets, from docker/secrets/, become Swarm secrets), `scale` sets the
replicas of the stack's `worker` service through the SDK, `down` runs `docker stack rm`. Nodes
are Swarm tasks: their node ids are their container ids (each task's hostname), so they are not
`node-N`, and Swarm, not fleet, picks which tasks go on a scale-down: each gets SIGTERM, which is
Celery's warm shutdown (its running jobs finish first, within the service's stop_grace_period);
a job cut off by the grace period is requeued by the master like any dead node's job.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from fleet.drivers.base import NodeShape, UpResult
from fleet.drivers.docker_engine import REPO, engine, sdk
from fleet.errors import FleetError
from fleet.settings import Settings
from fleet.statefile import read_secret_file, read_state, redis_url, remove_state, write_state
from fleet.store import registry

COMPOSE_FILE = REPO / "compose.yaml"


class SwarmDriver:
    name = "swarm"

    def __init__(self, settings: Settings, *, stack: str = "fleet", service: str = "worker",
                 compose_file: Path = COMPOSE_FILE) -> None:
        self.settings = settings
        self.stack = stack
        self.service = service
        self.compose_file = compose_file

    def up(self, workers: int, shape: NodeShape, *, flower: bool = True) -> UpResult:
        """Deploy the stack; the node shape comes from compose.yaml's deploy.resources."""
        client = engine()
        if client.info().get("Swarm", {}).get("LocalNodeState") != "active":
            raise FleetError("this engine is not in a swarm: `docker swarm init` (or join one)")
        secrets = self.compose_file.parent / "docker" / "secrets"
        if not (secrets / "redis_conf").is_file():
            raise FleetError(f"{secrets} has no secrets: `scripts/ci_containers.sh env` writes "
                             "them")
        proc = subprocess.run(["docker", "stack", "deploy", "-c", str(self.compose_file),
                               self.stack], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FleetError(f"docker stack deploy failed: {proc.stderr.strip()}")
        self.scale(workers)
        state = {"driver": self.name, "stack": self.stack, "started_at": time.time()}
        url = self.settings.redis_url or (
            read_secret_file(self.settings.redis_url_file, "FLEET_REDIS_URL_FILE")
            if self.settings.redis_url_file else None)
        if url:
            state["redis_url"] = url  # the state file is 0600, like the URL file
        write_state(self.settings, state)
        return UpResult(url or "", None, None, None, ())

    def down(self) -> None:
        subprocess.run(["docker", "stack", "rm", self.stack], capture_output=True, text=True)
        state = read_state(self.settings)
        if state and state.get("driver") == self.name:
            remove_state(self.settings)

    def scale(self, target: int, *, wait: float | None = None) -> tuple[list[str], list[str]]:
        """Set the worker service's replicas. Returns the task slots added or removed
        (`worker.3`): which containers Swarm stops on a scale-down is Swarm's choice."""
        if target < 0:
            raise FleetError("target must be >= 0")
        service = self._service()
        mode = service.attrs["Spec"].get("Mode", {})
        current = int(mode.get("Replicated", {}).get("Replicas", 0))
        service.scale(target)
        added = [f"{self.service}.{i}" for i in range(current + 1, target + 1)]
        removed = [f"{self.service}.{i}" for i in range(target + 1, current + 1)]
        if wait is not None:
            self.wait_for_nodes(target, wait)
        return added, removed

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        """Until exactly `count` of the service's tasks heartbeat (by container id)."""
        client = redis.Redis.from_url(redis_url(self.settings))
        deadline = time.monotonic() + timeout
        live: list[dict[str, Any]] = []
        while True:
            ids = self.task_containers()
            try:
                live = [r for r in registry.live_reports(client)
                        if any(cid.startswith(str(r.get("container") or "-")) for cid in ids)]
            except redis.ConnectionError:  # a stack just deployed: its Redis is still starting
                live = []
            if len(live) == count and len(ids) == count:
                return
            if time.monotonic() > deadline:
                raise FleetError(f"{len(live)} of {count} {self.stack}_{self.service} nodes "
                                 f"heartbeating after {timeout:g}s")
            time.sleep(0.5)

    def task_containers(self) -> list[str]:
        """Container ids of the service's running tasks ("starting" until its first healthy
        check, yet already a heartbeating node)."""
        tasks = self._service().tasks(filters={"desired-state": "running"})
        return [t["Status"]["ContainerStatus"]["ContainerID"] for t in tasks
                if t.get("Status", {}).get("State") in ("starting", "running")
                and t["Status"].get("ContainerStatus", {}).get("ContainerID")]

    def _service(self) -> Any:
        docker = sdk()

        name = f"{self.stack}_{self.service}"
        try:
            return engine().services.get(name)
        except docker.errors.NotFound:
            raise FleetError(f"no swarm service {name}: deploy the stack first "
                             f"(`docker stack deploy -c compose.yaml {self.stack}`)") from None
        except docker.errors.APIError as exc:
            raise FleetError(f"swarm: {exc.explanation}") from None
