"""The docker driver end to end: one fleet of containers for
the module, started and driven through the real CLI, removed by its labels at the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.settings import Settings
from tests.container.conftest import (
    REPO,
    assert_hardened,
    assert_no_secret,
    fleet_cli,
    fleet_json,
)
from tests.integration.support import eventually

pytestmark = pytest.mark.container

GIB = 2**30
EXAMPLES = REPO / "examples"


class DockerFleet:
    def __init__(self, home: Path, docker: Any) -> None:
        self.env = {"FLEET_HOME": str(home), "FLEET_HEARTBEAT_TTL": "5"}
        self.docker = docker
        self.settings = Settings(home=home)

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.settings.state_file.read_text())

    @property
    def client(self) -> Client:
        return Client(Settings(home=self.settings.home, redis_url=self.state["redis_url"]))

    def workers(self) -> list[Any]:
        return self.docker.containers.list(all=True, filters={"label": [
            f"fleet.id={self.state['fleet_id']}", "fleet.role=worker"]})

    def live_nodes(self) -> list[dict[str, Any]]:
        return fleet_json("nodes", env=self.env)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[DockerFleet]:
    f = DockerFleet(tmp_path_factory.mktemp("docker-fleet"), docker_client)
    try:
        fleet_cli("up", "--driver", "docker", "--workers", "2", "--cpus", "1", "--memory", "1g",
                  "--detach", env=f.env, timeout=900)
        yield f
    finally:
        fid = None
        try:
            fid = f.state["fleet_id"]
            for c in f.workers():
                print(f"--- {c.name} ---\n{c.logs(tail=30).decode(errors='replace')}")
        except Exception:
            pass
        fleet_cli("down", "--driver", "docker", env=f.env, check=False)
        if fid:  # whatever `down` left behind
            for c in docker_client.containers.list(all=True, filters={"label": f"fleet.id={fid}"}):
                c.remove(force=True)


def test_nodes_report_their_container_limits_from_inside(fleet: DockerFleet) -> None:
    def two_nodes() -> list[dict[str, Any]] | None:
        nodes = fleet.live_nodes()
        return nodes if len(nodes) == 2 else None

    nodes = eventually(two_nodes, 60, what="2 live nodes", interval=0.5)
    names = {c.name for c in fleet.workers()}
    for node in nodes:
        assert node["capacity"]["cpus"] == 1.0
        assert node["capacity"]["memory"] == 1 * GIB
        # read from the container's own cgroup, not taken from the command line
        assert node["capacity_source"]["cpus"].startswith("cgroup1 cpu.cfs_quota_us") or \
            node["capacity_source"]["cpus"].startswith("cgroup2 cpu.max")
        assert "memory" in node["capacity_source"]["memory"]
        assert node["container"] in names
    for c in fleet.workers():
        host = c.attrs["HostConfig"]
        assert host["NanoCpus"] == 10**9
        assert host["Memory"] == host["MemorySwap"] == 1 * GIB
        assert host["RestartPolicy"]["Name"] == "on-failure"


def test_torch_and_tf_examples_succeed_in_containers(fleet: DockerFleet) -> None:
    client = fleet.client
    overrides = ["params.epochs=5", "resources.memory=900Mi"]
    jobs = [client.submit(str(EXAMPLES / f"digits-{fw}.yaml"), overrides=overrides)
            for fw in ("torch", "tf")]
    for job in jobs:
        status = client.wait(job, timeout=300)
        assert status["state"] == "SUCCEEDED", status
        assert status["node"] in {"node-1", "node-2"}


def test_job_past_its_container_memory_fails_oom_and_the_node_serves_on(
    fleet: DockerFleet,
) -> None:
    client = fleet.client
    restarts = {c.name: c.attrs["RestartCount"] for c in fleet.workers()}
    # 700 MiB chunks: the second one takes the container past 1 GiB before the job's own
    # watchdog samples, so the kernel's OOM killer acts inside the container's cgroup.
    oom = client.submit({
        "name": "oom", "entrypoint": "workers.jobs.synthetic:hold_memory",
        "params": {"mib": 1400, "chunk_mib": 700, "seconds": 5},
        "resources": {"cpus": 1, "memory": "900Mi"}, "max_retries": 0, "timeout": 120,
    })
    status = client.wait(oom, timeout=120)
    assert status["state"] == "FAILED" and status["attempts"][-1]["end_reason"] == "OOM", status
    oom_node = status["node"]
    # both nodes full with one job each: the OOM node must run one of them
    nexts = [client.submit({"name": "next", "entrypoint": "workers.jobs.synthetic:sleep",
                            "params": {"seconds": 2}, "resources": {"cpus": 1, "memory": "512Mi"}})
             for _ in range(2)]
    done = [client.wait(j, timeout=120) for j in nexts]
    assert all(d["state"] == "SUCCEEDED" for d in done), done
    assert oom_node in {d["node"] for d in done}
    for c in fleet.workers():
        c.reload()
        assert c.status == "running" and c.attrs["RestartCount"] == restarts[c.name], c.name


def test_images_run_as_non_root_and_containers_are_locked_down(fleet: DockerFleet) -> None:
    for image in ("fleet/control", "fleet/worker", "fleet/worker-torch", "fleet/worker-tf"):
        uid = fleet.docker.containers.run(image, ["-u"], entrypoint=["id"], remove=True)
        assert int(uid.decode().strip()) != 0, image
    every = fleet.docker.containers.list(filters={"label": f"fleet.id={fleet.state['fleet_id']}"})
    assert {c.labels["fleet.role"] for c in every} == {"redis", "master", "flower", "worker"}
    for c in every:
        assert_hardened(c)
    # and the lock holds from inside: the root filesystem refuses a write, /work takes one
    worker = fleet.workers()[0]
    denied = worker.exec_run(["python", "-c", "open('/opt/venv/x', 'w')"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output, denied.output
    assert worker.exec_run(["sh", "-c", "echo ok > /work/probe && cat /work/probe"]).output == b"ok\n"


def test_no_secret_in_any_container_argv_environment_or_inspect(fleet: DockerFleet) -> None:
    """With a job running, `docker inspect` of every container and every
    /proc/<pid>/cmdline and environ inside it (read as the containers' user, which is what a
    job can read) hold neither the Redis nor Flower's password nor a URL with credentials."""
    client = fleet.client
    job = client.submit({"name": "running", "entrypoint": "workers.jobs.synthetic:sleep",
                         "params": {"seconds": 30}, "resources": {"cpus": 1, "memory": "256Mi"}})
    eventually(lambda: client.status(job)["state"] == "RUNNING", 60, what="a running job",
               interval=0.5)
    secrets = {"the Redis password": fleet.state["redis_url"].split(":")[2].split("@")[0],
               "Flower's password": Path(fleet.state["flower_password_file"]).read_text().strip()}
    every = fleet.docker.containers.list(filters={"label": f"fleet.id={fleet.state['fleet_id']}"})
    assert {c.labels["fleet.role"] for c in every} >= {"redis", "master", "flower", "worker"}
    seen = {c.labels["fleet.role"]: assert_no_secret(c, secrets) for c in every}
    assert "redis-server" in seen["redis"] and "PATH=" in seen["redis"]  # environs were read
    assert "FLEET_REDIS_URL_FILE=/run/secrets/redis_url" in seen["worker"]
    assert "workers.process.jobproc" in "".join(assert_no_secret(c, secrets) for c in fleet.workers())
    client.cancel(job)


def test_scale_to_3_then_1_drains_and_removes_without_losing_a_job(fleet: DockerFleet) -> None:
    client = fleet.client
    # no --driver: `fleet scale` takes the one recorded by `fleet up --driver docker`
    fleet_cli("scale", "worker=3", "--wait", "90", env=fleet.env)
    assert len({n["node"] for n in fleet.live_nodes()}) == 3
    assert len([c for c in fleet.workers() if c.status == "running"]) == 3
    # one job per node, so the two nodes that go are busy: they must finish, not lose, them
    jobs = [client.submit({"name": "busy", "entrypoint": "workers.jobs.synthetic:sleep",
                           "params": {"seconds": 8}, "resources": {"cpus": 1, "memory": "256Mi"}})
            for _ in range(3)]
    eventually(lambda: all(client.status(j)["state"] == "RUNNING" for j in jobs), 60,
               what="3 jobs running", interval=0.5)
    out = fleet_cli("scale", "worker=1", "--driver", "docker", "--wait", "120", env=fleet.env)
    assert "draining: node-" in out.stdout
    for job in jobs:
        assert client.wait(job, timeout=120)["state"] == "SUCCEEDED"
    left = fleet.workers()
    assert len(left) == 1, [c.name for c in left]
    assert [n["node"] for n in fleet.live_nodes()] == [left[0].labels["fleet.node"]]
