"""examples/own-code in containers, as tests/integration/test_own_code.py runs it locally: the
folder copied outside the checkout and sent with `fleet submit job.yaml --code DIR --wait` to
`fleet up --driver docker` and to compose.yaml with two workers, with the stock images (not
rebuilt) and no bind mount of the folder. Its progress, logs, checkpoints and trained model
(`fleet artifacts`) are there; then the container running it is killed with SIGKILL mid-run
and the job finishes on the other node from its checkpoint.

A bundle with `requirements:` runs on both too: the nodes' package index (FLEET_PIP_INDEX_URL
in the environment of `fleet up` / `docker-compose up`) is the test's own, served on 127.0.0.1
for the docker driver's workers (they share the host's network), and on the gateway of the
Compose project's network for its workers.

On Compose the workers share no folder: checkpoints, logs and the model go to the project's
`s3` service, and the job killed mid-run resumes on the other worker from the checkpoint its
dead node uploaded there. `fleet artifacts` reads them from the host with the S3 keys in
docker/secrets and the S3 port published on 127.0.0.1 (FLEET_S3_ENDPOINT, which wins over the
`http://s3:8333` the fleet publishes for its containers), as docs/containers.md says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

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
from tests.container.test_bundles_docker import assert_no_mount_of, image_ids
from tests.container.test_compose import compose_command
from tests.integration.support import eventually
from tests.wheels import make_wheel, served, simple_index

pytestmark = pytest.mark.container

EPOCHS = 6  # the short run; the killed one runs 14 epochs, half a second apart


class Fleet:
    """A running fleet as its user sees it: the CLI's environment and a Client."""

    def __init__(self, env: dict[str, str], client: Client, root: Path,
                 kill: Callable[[str], None]) -> None:
        self.env = env
        self.client = client
        self.root = root
        self.kill = kill  # SIGKILL the container of a node, which stays down

    def fleet(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*FLEET, *args], env={**os.environ, **self.env}, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)


CODE_FOLDERS = ("short", "long", "probe")  # under a fleet's root: the folders sent as bundles


def assert_no_mount_of_code(root: Path, containers: list[Any]) -> None:
    for name in CODE_FOLDERS:
        if (root / name).exists():
            assert_no_mount_of(root / name, containers)


def own_code(root: Path) -> Path:
    """examples/own-code, copied to a folder outside the checkout."""
    folder = Path(shutil.copytree(REPO / "examples" / "own-code", root / "my-model"))
    assert not folder.resolve().is_relative_to(REPO)
    return folder


def trains_and_keeps_its_model(fleet: Fleet) -> str:
    """`fleet submit job.yaml --code DIR --wait`: SUCCEEDED, with progress, logs, a committed
    checkpoint and the model in `fleet artifacts`. The job's id."""
    folder = own_code(fleet.root / "short")
    done = fleet.fleet("submit", "job.yaml", "--code", str(folder), "--wait",
                       "--set", f"params.epochs={EPOCHS}", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout, done.stdout
    job = done.stdout.split("submitted ", 1)[1].split()[0]

    shown = fleet.fleet("status", job, "--json", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["state"] == "SUCCEEDED" and status["progress"]["step"] == EPOCHS, status
    assert status["result"]["epochs"] == EPOCHS and status["result"]["resumed_from"] is None
    metrics = fleet.client.metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, EPOCHS + 1))
    assert metrics[-1]["metrics"]["loss"] < metrics[0]["metrics"]["loss"] / 2  # it learns
    logs = fleet.fleet("logs", job, cwd=folder).stdout
    assert "epoch 1/6 loss" in logs and "epoch 6/6 loss" in logs, logs
    committed = fleet.client.store.committed_checkpoints(job)
    assert committed and committed[0]["step"] == EPOCHS, committed
    assert_model_kept(fleet, folder, job, status["result"])
    return job


def resumes_after_its_node_is_killed(fleet: Fleet) -> dict[str, Any]:
    """A 14-epoch run; after 3 epochs are checkpointed the container running it is killed: the
    job resumes on another node from its checkpoint. Its final status."""
    folder = own_code(fleet.root / "long")
    sent = fleet.fleet("submit", "job.yaml", "--code", str(folder), "--set",
                       "params.epochs=14", "--set", "params.epoch_pause=0.5", cwd=folder)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job = sent.stdout.strip()

    def checkpointed() -> int:
        found = fleet.client.store.committed_checkpoints(job)
        return int(found[0]["step"]) if found else 0

    eventually(lambda: checkpointed() >= 3, 180, what="3 epochs checkpointed", interval=0.2)
    victim = fleet.client.status(job)["node"]
    fleet.kill(victim)
    at_kill = checkpointed()

    final: dict[str, Any] = fleet.client.wait(job, timeout=240)
    assert final["state"] == "SUCCEEDED", final
    attempts = final["attempts"]
    assert [a["end_reason"] for a in attempts] == ["NODE_LOST", "SUCCEEDED"], attempts
    assert attempts[1]["node"] != victim
    assert attempts[1]["resumed_from_step"] >= at_kill > 0, attempts
    assert final["result"]["resumed_from"] == attempts[1]["resumed_from_step"]
    assert final["result"]["epochs"] == 14
    resumed = fleet.fleet("logs", job, "--attempt", "2", cwd=folder).stdout
    assert f"resuming after epoch {attempts[1]['resumed_from_step']}" in resumed, resumed
    assert "epoch 1/14 " not in resumed  # the second attempt did not start over
    assert_model_kept(fleet, folder, job, final["result"])
    return final


def assert_model_kept(fleet: Fleet, folder: Path, job: str, result: dict[str, Any]) -> None:
    """`fleet artifacts JOB -o DIR` gives model.pt; with torch here, the weights the job
    trained: the validation loss it reported."""
    out = fleet.root / f"out-{job}"
    got = fleet.fleet("artifacts", job, "-o", str(out), cwd=folder)
    assert got.returncode == 0, got.stdout + got.stderr
    model_file = out / "model.pt"
    assert model_file.is_file() and model_file.stat().st_size > 0, list(out.iterdir())
    try:
        import torch
    except ImportError:
        return
    found = importlib.util.spec_from_file_location("mytrain", folder / "mytrain.py")
    assert found is not None and found.loader is not None
    mytrain = importlib.util.module_from_spec(found)
    found.loader.exec_module(mytrain)
    model = mytrain.make_model(32)
    model.load_state_dict(torch.load(model_file, weights_only=True))
    x, y = mytrain.make_data(2048, 0)
    with torch.no_grad():
        val_loss = torch.nn.MSELoss()(model(x[1843:]), y[1843:]).item()
    assert val_loss == pytest.approx(result["val_loss"], rel=1e-5)


# -- fleet up --driver docker ----------------------------------------------------------------
PROBE = '''\
import fleetprobe


def run(ctx):
    print("imported", fleetprobe.__name__, flush=True)
    return {"value": fleetprobe.VALUE, "file": fleetprobe.__file__}
'''


def probe_index(root: Path) -> Path:
    """A PEP 503 index with one package no image has: its folder."""
    wheel = make_wheel(root / "wheels", "fleetprobe-pkg", "1.0",
                       {"fleetprobe/__init__.py": "VALUE = 42\n"})
    return simple_index(root, {"fleetprobe-pkg": wheel})


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The probe's index, served on 127.0.0.1 (the docker driver's workers share the host's
    network)."""
    with served(probe_index(tmp_path_factory.mktemp("index"))) as url:
        yield url


@pytest.fixture(scope="module")
def docker_fleet(docker_client: Any, index: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("own-code-docker")
    home = root / "home"
    env = {"FLEET_HOME": str(home), "FLEET_HEARTBEAT_TTL": "5", "FLEET_PIP_INDEX_URL": index}
    before = image_ids(docker_client, ("fleet/control", "fleet/worker"))
    fid = None
    try:
        fleet_cli("up", "--driver", "docker", "--workers", "2", "--cpus", "1", "--memory", "2g",
                  "--no-flower", "--detach", env=env, timeout=900)
        state = Settings(home=home).state_file.read_text()
        fid = re.search(r'"fleet_id": "([0-9a-f]+)"', state)[1]  # type: ignore[index]

        def workers() -> dict[str, Any]:
            return {c.labels["fleet.node"]: c for c in docker_client.containers.list(
                filters={"label": [f"fleet.id={fid}", "fleet.role=worker"]})}

        def kill(node: str) -> None:
            victim = workers()[node]
            victim.update(restart_policy={"Name": "no"})
            victim.kill(signal="SIGKILL")

        yield Fleet(env, Client(Settings(home=home)), root, kill)
        every = docker_client.containers.list(all=True, filters={"label": f"fleet.id={fid}"})
        assert_no_mount_of_code(root, every)
        assert image_ids(docker_client, tuple(before)) == before  # nothing rebuilt
    finally:
        docker_fleet_down(docker_client, fid, env)


def test_own_code_trains_on_the_docker_driver(docker_fleet: Fleet) -> None:
    trains_and_keeps_its_model(docker_fleet)


def imports_its_requirement(fleet: Fleet) -> None:
    """A bundle with `requirements: [fleetprobe-pkg==1.0]`: the node builds its env from the
    index it was given (PREPARING shown) and the job imports the package from there."""
    folder = fleet.root / "probe"
    folder.mkdir()
    (folder / "probe.py").write_text(PROBE)
    (folder / "job.yaml").write_text(
        "name: probe\nentrypoint: probe:run\ncode: .\nrequirements: [fleetprobe-pkg==1.0]\n"
        "resources: {cpus: 0.5, memory: 256Mi}\n")
    done = fleet.fleet("submit", "job.yaml", "--wait", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.split("submitted ", 1)[1].split()[0]
    status = fleet.client.status(job)
    assert status["state"] == "SUCCEEDED", status
    assert status["result"]["value"] == 42
    assert "/envs/" in status["result"]["file"], status["result"]  # the job's env, not the image
    assert status["attempts"][0]["env_built"] is True, status["attempts"]
    events = [e["event"] for e in fleet.client.events(job)]
    assert events.index("started") < events.index("preparing") < events.index("prepared")
    logs = fleet.fleet("logs", job, cwd=folder).stdout
    assert "Successfully installed fleetprobe-pkg-1.0" in logs, logs  # pip's output
    assert "imported fleetprobe" in logs, logs


def test_a_bundles_requirements_come_from_the_nodes_index_on_the_docker_driver(
        docker_fleet: Fleet) -> None:
    imports_its_requirement(docker_fleet)


def test_own_code_resumes_on_the_other_container_when_its_node_is_killed(
        docker_fleet: Fleet) -> None:
    resumes_after_its_node_is_killed(docker_fleet)


# -- docker-compose up, two workers ----------------------------------------------------------
@pytest.fixture(scope="module")
def compose_fleet(docker_client: Any, compose_secrets: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """compose.yaml as it is, scaled to two workers."""
    root = tmp_path_factory.mktemp("own-code-compose")
    name = f"fleetoc{os.getpid()}"
    env = {**os.environ, "FLEET_REDIS_PORT": str(free_port()),
           "FLEET_FLOWER_PORT": str(free_port()), "FLEET_S3_PORT": str(free_port())}
    base = [*compose_command(), "-p", name, "-f", str(REPO / "compose.yaml")]
    stack = ExitStack()
    before = image_ids(docker_client, ("fleet/control", "fleet/worker-torch"))
    try:
        # Redis and the master first: the project's network exists then, and the test's
        # package index is served on its gateway, which the workers (started next, with
        # FLEET_PIP_INDEX_URL in the environment of `up`) reach from their bridge network.
        up = subprocess.run([*base, "up", "-d", "--scale", "worker=0"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        network = docker_client.networks.get(f"{name}_default")
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        index = stack.enter_context(served(probe_index(root / "index"), host=gateway))
        up = subprocess.run([*base, "up", "-d", "--scale", "worker=2"], cwd=REPO,
                            env={**env, "FLEET_PIP_INDEX_URL": index},
                            capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        password = secret_value(compose_secrets, "redis_password")
        url = f"redis://:{password}@127.0.0.1:{env['FLEET_REDIS_PORT']}/0"
        s3 = {"FLEET_S3_ENDPOINT": f"http://127.0.0.1:{env['FLEET_S3_PORT']}",
              "FLEET_S3_CREDENTIALS_FILE": str(compose_secrets / "s3_credentials")}

        def workers() -> dict[str, Any]:
            return {c.attrs["Config"]["Hostname"]: c for c in docker_client.containers.list(
                filters={"label": [f"com.docker.compose.project={name}",
                                   "com.docker.compose.service=worker"]})}

        def kill(node: str) -> None:
            victim = workers()[node]
            victim.update(restart_policy={"Name": "no"})
            victim.kill(signal="SIGKILL")

        client = Client(Settings(redis_url=url, s3_endpoint=s3["FLEET_S3_ENDPOINT"],
                                 s3_credentials_file=Path(s3["FLEET_S3_CREDENTIALS_FILE"])))
        assert len(workers()) == 2
        eventually(lambda: {n["node"] for n in client.nodes()} >= set(workers()), 90,
                   what="both compose workers heartbeating", interval=0.5)
        user_env = {"FLEET_REDIS_URL": url, "FLEET_HOME": str(root / "home"), **s3}
        yield Fleet(user_env, client, root, kill)
        every = docker_client.containers.list(all=True, filters={"label": (
            f"com.docker.compose.project={name}")})
        assert_no_mount_of_code(root, every)
        assert image_ids(docker_client, tuple(before)) == before
    finally:
        compose_down(base, env)
        stack.close()


def test_own_code_trains_on_compose(compose_fleet: Fleet) -> None:
    trains_and_keeps_its_model(compose_fleet)


def test_a_bundles_requirements_come_from_the_workers_index_on_compose(
        compose_fleet: Fleet) -> None:
    imports_its_requirement(compose_fleet)


def test_own_code_resumes_on_the_other_compose_worker_when_its_node_is_killed(
        compose_fleet: Fleet) -> None:
    resumes_after_its_node_is_killed(compose_fleet)
