"""compose.yaml with Compose: redis, s3, master, flower and 4 workers with
the file's limits; a job submitted from the host runs in one of the workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.drivers.redis_server import free_port
from fleet.settings import Settings
from tests.container.conftest import (
    REPO,
    assert_hardened,
    assert_no_secret,
    compose_down,
    secret_value,
)
from tests.integration.support import eventually

pytestmark = pytest.mark.container

EXAMPLES = REPO / "examples"


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose nor `docker compose` is installed")


@pytest.fixture
def project(docker_client: Any, compose_secrets: Path) -> Iterator[dict[str, Any]]:
    name = f"fleetct{os.getpid()}"
    env = {**os.environ, "FLEET_REDIS_PORT": str(free_port()),
           "FLEET_FLOWER_PORT": str(free_port()), "FLEET_S3_PORT": str(free_port())}
    base = [*compose_command(), "-p", name, "-f", str(REPO / "compose.yaml")]
    try:
        up = subprocess.run([*base, "up", "-d"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"name": name, "env": env, "base": base}
    finally:
        compose_down(base, env)


def test_compose_up_runs_a_host_submitted_job_in_a_limited_worker(
    project: dict[str, Any], docker_client: Any, compose_secrets: Path,
) -> None:
    containers = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={project['name']}"})
    by_service: dict[str, list[Any]] = {}
    for c in containers:
        by_service.setdefault(c.labels["com.docker.compose.service"], []).append(c)
    assert {s: len(cs) for s, cs in by_service.items()} == {
        "redis": 1, "s3": 1, "master": 1, "flower": 1, "worker": 4}
    for c in by_service["worker"]:
        host = c.attrs["HostConfig"]
        assert host["NanoCpus"] == 10**9 and host["Memory"] == 2**30
    for c in containers:
        assert_hardened(c)

    password = secret_value(compose_secrets, "redis_password")
    url = f"redis://:{password}@127.0.0.1:{project['env']['FLEET_REDIS_PORT']}/0"
    client = Client(Settings(redis_url=url))
    worker_ids = {c.id[:12] for c in by_service["worker"]}
    eventually(lambda: {n["container"] for n in client.nodes()} >= worker_ids, 90,
               what="4 compose workers heartbeating", interval=0.5)
    for node in client.nodes():
        assert node["capacity"]["cpus"] == 1.0 and node["capacity"]["memory"] == 2**30

    # submitted from the host with the CLI, as a user would
    out = subprocess.run(
        ["fleet", "submit", str(EXAMPLES / "digits-torch.yaml"), "--set", "params.epochs=3",
         "--set", "resources.memory=900Mi"],
        env={**os.environ, "FLEET_REDIS_URL": url, "PATH": f"{Path(os.sys.executable).parent}:"
             + os.environ.get("PATH", "")},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    eventually(lambda: client.status(job)["state"] in ("RUNNING", "SUCCEEDED"), 120,
               what="the job running", interval=0.5)
    # no secret in `docker inspect` nor in any process inside
    secrets = {"the Redis password": password,
               "Flower's password": secret_value(compose_secrets, "flower_password"),
               "the S3 secret key": secret_value(compose_secrets, "s3_credentials")
               .rsplit("=", 1)[1].strip()}
    seen = {c.name: assert_no_secret(c, secrets) for c in containers}
    assert any("FLEET_REDIS_URL_FILE=/run/secrets/redis_url" in text for text in seen.values())
    status = client.wait(job, timeout=300)
    assert status["state"] == "SUCCEEDED", status
    assert status["node"] in worker_ids

    # Flower is there, and asks for a login
    flower = f"http://127.0.0.1:{project['env']['FLEET_FLOWER_PORT']}/"

    def flower_says_401() -> bool:
        try:
            urllib.request.urlopen(flower, timeout=3)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False
        return False

    eventually(flower_says_401, 60, what="Flower answering 401 without credentials")
