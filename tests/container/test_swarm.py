"""compose.yaml on a single-node Swarm: `docker stack deploy`, then
`fleet scale worker=3 --driver swarm` gives 3 heartbeating nodes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.drivers.redis_server import free_port
from fleet.drivers.swarm import SwarmDriver
from fleet.settings import Settings
from tests.container.conftest import REPO, assert_no_secret, fleet_cli, secret_value
from tests.integration.support import eventually

pytestmark = pytest.mark.container

STACK = "fleet"  # the swarm driver's default stack name


@pytest.fixture
def stack(docker_client: Any, compose_secrets: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    joined_here = docker_client.info()["Swarm"]["LocalNodeState"] != "active"
    if joined_here:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True,
                       capture_output=True, timeout=60)
    port = str(free_port())
    env = {**os.environ, "FLEET_REDIS_PORT": port, "FLEET_FLOWER_PORT": str(free_port())}
    try:
        deploy = subprocess.run(["docker", "stack", "deploy", "-c", str(REPO / "compose.yaml"),
                                 STACK], env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert deploy.returncode == 0, deploy.stderr
        password = secret_value(compose_secrets, "redis_password")
        url_file = tmp_path / "redis_url"  # the CLI gets the URL as a file too
        url_file.write_text(f"redis://:{password}@127.0.0.1:{port}/0\n")
        url_file.chmod(0o600)
        yield {"env": {"FLEET_REDIS_URL_FILE": str(url_file), "FLEET_HOME": str(tmp_path)},
               "redis_url": url_file.read_text().strip(), "redis_password": password,
               "flower_password": secret_value(compose_secrets, "flower_password")}
    finally:
        subprocess.run(["docker", "stack", "rm", STACK], capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        label = f"com.docker.stack.namespace={STACK}"
        while time.monotonic() < deadline and docker_client.containers.list(
                all=True, sparse=True, filters={"label": label}):
            time.sleep(1)
        for volume in docker_client.volumes.list(filters={"label": label}):
            try:  # `stack rm` keeps them: the next deploy would find this one's Redis data
                volume.remove(force=True)
            except Exception as exc:  # still in use: left, and said
                print(f"volume {volume.name} not removed: {exc}")
        if joined_here:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True,
                           timeout=60)


def test_stack_deploy_then_scale_to_3_gives_3_heartbeating_nodes(
    stack: dict[str, Any], docker_client: Any,
) -> None:
    fleet_cli("scale", "worker=3", "--driver", "swarm", "--wait", "180", env=stack["env"],
              timeout=240)
    client = Client(Settings(redis_url=stack["redis_url"]))
    tasks = SwarmDriver(Settings(redis_url=stack["redis_url"])).task_containers()
    assert len(tasks) == 3

    def three_live() -> bool:
        live = {n["container"] for n in client.nodes()}
        return all(any(cid.startswith(c) for c in live if c) for cid in tasks)

    eventually(three_live, 60, what="the 3 tasks' nodes heartbeating")
    for node in client.nodes():
        if any(cid.startswith(node["container"] or "-") for cid in tasks):
            assert node["capacity"]["cpus"] == 1.0 and node["capacity"]["memory"] == 2**30
    # the hardening Swarm honours: read-only root, every capability dropped, non-root
    for cid in tasks:
        c = docker_client.containers.get(cid)
        host = c.attrs["HostConfig"]
        assert host.get("ReadonlyRootfs") is True, c.name
        assert [x.upper() for x in host.get("CapDrop") or []] in (["ALL"], ["CAP_ALL"]), c.name
        assert c.attrs["Config"]["User"] not in ("", "0", "root"), c.name
    # no secret in any service spec, container or process of the stack
    secrets = {"the Redis password": stack["redis_password"],
               "Flower's password": stack["flower_password"]}
    label = f"com.docker.stack.namespace={STACK}"
    for service in docker_client.services.list(filters={"label": label}):
        spec = json.dumps(service.attrs)
        assert not any(secret in spec for secret in secrets.values()), service.name
    for c in docker_client.containers.list(filters={"label": label}):
        assert_no_secret(c, secrets)
