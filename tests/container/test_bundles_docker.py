"""Code bundles in containers: a folder outside the checkout, unknown to the images, runs on
`fleet up --driver docker`, on compose.yaml with Compose and on a Swarm stack, with the stock
images (not rebuilt) and no bind mount of the folder: the bundle travels through the fleet's
Redis and each node unpacks it into its own cache, read-only, as the containers' user."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.bundles.pack import pack
from fleet.client import Client
from fleet.drivers.redis_server import free_port
from fleet.settings import Settings
from tests.container.conftest import (
    FLEET,
    REPO,
    compose_down,
    docker_fleet_down,
    fleet_cli,
    secret_value,
)
from tests.container.test_compose import compose_command
from tests.container.test_swarm import stack  # noqa: F401  (the Swarm fixture)
from tests.integration.support import eventually

pytestmark = pytest.mark.container

CONTAINER_UID = 10001  # the images' user (docker/Dockerfile)

# numpy only: what the stock images have. It returns where it was imported from and who ran it.
TRAIN = '''\
import json
import os
import sys

import numpy as np

from mymodel.data import points


def train(ctx, steps=6, lr=0.5, step_seconds=0.0):
    x, y = points()
    w, start = np.zeros(2), 0
    found = ctx.restore()
    if found is not None:
        start, w = found[0], np.array(json.loads((found[1] / "w.json").read_text()))
    for step in range(start + 1, steps + 1):
        if step_seconds and ctx.wait(step_seconds):
            return {"stopped": step}
        w = w - lr * 2 * x.T @ (x @ w - y) / len(y)
        loss = float(np.mean((x @ w - y) ** 2))
        ctx.checkpoint(step, lambda d, w=w: (d / "w.json").write_text(json.dumps(w.tolist())))
        ctx.report(step, loss=loss)
        print(f"step {step} loss {loss:.5f}", flush=True)
    print("trained from a bundle", flush=True)
    return {"loss": loss, "uid": os.getuid(), "euid": os.geteuid(), "file": __file__,
            "path0": sys.path[0], "resumed_from": start}
'''

DATA = '''\
import numpy as np


def points():
    x = np.stack([np.linspace(-1, 1, 64), np.ones(64)], axis=1)
    return x, x @ np.array([3.0, -1.0])
'''

SPEC = "name: mine\nentrypoint: mymodel.train:train\nresources: {cpus: 0.5, memory: 256Mi}\n"


def own_project(root: Path) -> tuple[Path, Path]:
    """(spec file, code folder): a model no image holds, in a folder outside the checkout."""
    folder = root / "my-project"
    (folder / "mymodel").mkdir(parents=True)
    # a new digest each run: the fleet must receive and unpack it, not find it from a run before
    (folder / "mymodel" / "__init__.py").write_text(f"# {secrets.token_hex(8)}\n")
    (folder / "mymodel" / "train.py").write_text(TRAIN)
    (folder / "mymodel" / "data.py").write_text(DATA)
    assert not folder.resolve().is_relative_to(REPO)
    spec = root / "mine.yaml"
    spec.write_text(SPEC)
    return spec, folder


def submit_and_wait(root: Path, env: dict[str, str]) -> tuple[str, Path]:
    """`fleet submit mine.yaml --code my-project --wait` from `root`, as a user types it,
    and `fleet logs` of the job: (job id, code folder)."""
    spec, folder = own_project(root)
    full = {**os.environ, **env}
    done = subprocess.run([*FLEET, "submit", str(spec), "--code", str(folder), "--wait"],
                          env=full, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout, done.stdout
    found = re.search(r"submitted (\S+)", done.stdout)
    assert found, done.stdout
    job = found[1]
    logs = subprocess.run([*FLEET, "logs", job], env=full, cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert "step 6 loss" in logs.stdout and "trained from a bundle" in logs.stdout, logs.stdout
    return job, folder


def assert_ran_from_its_cache(status: dict[str, Any], folder: Path, worker: Any) -> None:
    """The job ran as the containers' user, its module imported from the node's cache folder
    of the bundle's digest, which is read-only and the node's own."""
    assert status["state"] == "SUCCEEDED", status
    result = status["result"]
    assert result["loss"] < 0.1
    assert result["uid"] == result["euid"] == CONTAINER_UID, result
    hex_digest = pack(folder).digest.removeprefix("sha256:")
    root = result["path0"]
    assert root.endswith(f"/bundles/{hex_digest}"), result
    assert result["file"] == f"{root}/mymodel/train.py", result
    listing = worker.exec_run(["stat", "-c", "%a %u %n", root, f"{root}/mymodel",
                               f"{root}/mymodel/train.py", os.path.dirname(root)])
    assert listing.exit_code == 0, listing.output
    modes = [line.split(" ", 2) for line in listing.output.decode().splitlines()]
    assert [m[:2] for m in modes] == [["555", str(CONTAINER_UID)], ["555", str(CONTAINER_UID)],
                                      ["444", str(CONTAINER_UID)], ["700", str(CONTAINER_UID)]]


def assert_no_mount_of(folder: Path, containers: list[Any]) -> None:
    for c in containers:
        c.reload()
        sources = [m.get("Source", "") for m in c.attrs["Mounts"]]
        assert not any(s and (folder.is_relative_to(s) and s not in ("/", "/tmp")
                              or Path(s).is_relative_to(folder)) for s in sources), (c.name, sources)


def image_ids(docker_client: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {n: docker_client.images.get(n).id for n in names}


# -- fleet up --driver docker ----------------------------------------------------------------
def test_a_bundle_job_runs_on_the_docker_driver_and_resumes_when_its_node_is_killed(
    tmp_path: Path, docker_client: Any,
) -> None:
    home = tmp_path / "home"
    env = {"FLEET_HOME": str(home), "FLEET_HEARTBEAT_TTL": "5"}
    before = image_ids(docker_client, ("fleet/control", "fleet/worker"))
    fid = None
    try:
        fleet_cli("up", "--driver", "docker", "--workers", "2", "--cpus", "1", "--memory", "1g",
                  "--detach", env=env, timeout=900)
        state = Settings(home=home).state_file.read_text()
        fid = re.search(r'"fleet_id": "([0-9a-f]+)"', state)[1]  # type: ignore[index]
        job, folder = submit_and_wait(tmp_path / "elsewhere", env)
        workers = {c.labels["fleet.node"]: c for c in docker_client.containers.list(
            filters={"label": [f"fleet.id={fid}", "fleet.role=worker"]})}
        assert len(workers) == 2
        client = Client(Settings(home=home))
        status = client.status(job)
        assert_ran_from_its_cache(status, folder, workers[status["node"]])
        every = docker_client.containers.list(filters={"label": f"fleet.id={fid}"})
        assert_no_mount_of(folder, every)
        assert image_ids(docker_client, tuple(before)) == before  # nothing rebuilt

        # kill -9 of the container running it, which stays down: the job resumes on the other
        # node from its last checkpoint, with the same bundle
        long = client.submit(str(folder.parent / "mine.yaml"), code=folder, overrides=[
            "params.steps=12", "params.step_seconds=0.4"])
        eventually(lambda: ((client.status(long).get("progress") or {}).get("step") or 0) >= 4,
                   60, what="4 steps done", interval=0.2)
        victim = client.status(long)["node"]
        workers[victim].update(restart_policy={"Name": "no"})
        workers[victim].kill(signal="SIGKILL")
        final = client.wait(long, timeout=180)
        assert final["state"] == "SUCCEEDED", final
        assert [a["end_reason"] for a in final["attempts"]] == ["NODE_LOST", "SUCCEEDED"], final
        assert final["node"] != victim
        assert final["result"]["resumed_from"] >= 4 and final["result"]["loss"] < 0.1, final
        assert_ran_from_its_cache(final, folder, workers[final["node"]])
    finally:
        docker_fleet_down(docker_client, fid, env)


# -- docker-compose up -----------------------------------------------------------------------
@pytest.fixture
def one_worker_project(docker_client: Any, compose_secrets: Path) -> Iterator[dict[str, Any]]:
    """compose.yaml as it is, with one worker replica (the suite's machine is small)."""
    name = f"fleetbd{os.getpid()}"
    env = {**os.environ, "FLEET_REDIS_PORT": str(free_port()),
           "FLEET_FLOWER_PORT": str(free_port())}
    base = [*compose_command(), "-p", name, "-f", str(REPO / "compose.yaml")]
    try:
        up = subprocess.run([*base, "up", "-d", "--scale", "worker=1"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"name": name, "env": env}
    finally:
        compose_down(base, env)


def test_a_bundle_job_runs_on_compose_with_the_stock_image(
    one_worker_project: dict[str, Any], docker_client: Any, compose_secrets: Path,
    tmp_path: Path,
) -> None:
    before = image_ids(docker_client, ("fleet/control", "fleet/worker-torch"))
    password = secret_value(compose_secrets, "redis_password")
    url = f"redis://:{password}@127.0.0.1:{one_worker_project['env']['FLEET_REDIS_PORT']}/0"
    workers = docker_client.containers.list(filters={"label": [
        f"com.docker.compose.project={one_worker_project['name']}",
        "com.docker.compose.service=worker"]})
    assert len(workers) == 1
    client = Client(Settings(redis_url=url))
    eventually(lambda: {n["container"] for n in client.nodes()} >= {workers[0].id[:12]}, 90,
               what="the compose worker heartbeating", interval=0.5)
    job, folder = submit_and_wait(tmp_path / "elsewhere",
                             {"FLEET_REDIS_URL": url, "FLEET_HOME": str(tmp_path / "home")})
    assert_ran_from_its_cache(client.status(job), folder, workers[0])
    every = docker_client.containers.list(filters={"label": (
        f"com.docker.compose.project={one_worker_project['name']}")})
    assert_no_mount_of(folder, every)
    assert image_ids(docker_client, tuple(before)) == before


# -- docker stack deploy (Swarm) -------------------------------------------------------------
def test_a_bundle_job_runs_on_a_swarm_stack(
    stack: dict[str, Any], docker_client: Any, tmp_path: Path,  # noqa: F811
) -> None:
    # one replica (the suite's machine is small); --wait: until it heartbeats
    fleet_cli("scale", "worker=1", "--driver", "swarm", "--wait", "180", env=stack["env"],
              timeout=240)
    client = Client(Settings(redis_url=stack["redis_url"]))
    job, folder = submit_and_wait(tmp_path / "elsewhere", stack["env"])
    status = client.status(job)
    # a replica's node id is its hostname, which Swarm makes the container's short id
    assert_ran_from_its_cache(status, folder, docker_client.containers.get(status["node"]))
