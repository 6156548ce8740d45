"""The fleet end to end: submit → place by reported load → the node's own queue → terminal state.

Real Redis, real master and worker processes, real Celery; synthetic jobs keep these quick.
"""

from __future__ import annotations

import json
import socket

import pytest

from fleet.broker import make_app, task_id
from fleet.client import NOT_ACCEPTED
from fleet.errors import SpecError
from fleet.store import keys
from tests.integration.support import EXAMPLES, Fleet, eventually

pytestmark = pytest.mark.integration



def job(entrypoint: str, name: str = "t", cpus: float = 1, memory: str = "256Mi", **params) -> dict:
    return {"name": name, "entrypoint": f"workers.jobs.synthetic:{entrypoint}",
            "resources": {"cpus": cpus, "memory": memory}, "params": params}


def test_job_runs_on_its_nodes_queue_and_succeeds(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    job_id = fleet.client.submit(job("sleep", seconds=0.5, steps=2))
    final = fleet.wait_job(job_id, 60)
    assert final["state"] == "SUCCEEDED", final
    assert final["node"] == "node-1"
    meta = make_app(fleet.settings).AsyncResult(task_id(job_id, final["attempt"]))
    assert meta.result["state"] == "SUCCEEDED"
    assert meta.queue == keys.node_queue("node-1")
    assert meta.worker == f"node-1@{socket.gethostname()}"
    assert final["placement"]["node"] == "node-1"


def test_job_goes_to_the_less_loaded_node(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=2, memory="2Gi", cores=[0, 1])
    fleet.node("node-2", cpus=2, memory="2Gi", cores=[0, 1])
    busy = fleet.client.submit(job("burn_cpu", name="busy", cpus=1.5, seconds=20))
    busy_node = fleet.wait_state(busy, "RUNNING")["node"]
    other = ({"node-1", "node-2"} - {busy_node}).pop()
    new = fleet.client.submit(job("sleep", name="light", cpus=0.5, seconds=0.2, steps=1))
    final = fleet.wait_job(new, 60)
    assert final["state"] == "SUCCEEDED"
    assert final["node"] == other, final["placement"]
    placement = final["placement"]
    scores = {c["node"]: c["score"] for c in placement["candidates"]}
    assert scores[other] > scores[busy_node]
    assert placement["policy"] == "spread"
    meta = make_app(fleet.settings).AsyncResult(task_id(new, final["attempt"]))
    assert meta.queue == keys.node_queue(other)
    fleet.client.cancel(busy)
    assert fleet.wait_job(busy, 30)["state"] == "CANCELLED"


def test_job_bigger_than_every_node_is_rejected_at_submit(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", memory="1Gi")
    with pytest.raises(SpecError) as err:
        fleet.client.submit(job("noop", memory="64Gi"))
    assert err.value.field == "resources.memory"
    assert fleet.r.zcard(keys.JOBS) == 0 and fleet.r.zcard(keys.PENDING) == 0


def test_job_that_fits_only_later_waits_pending_then_runs(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, memory="1Gi")
    # Half a CPU each, so memory alone keeps the second job waiting.
    first = fleet.client.submit(job("sleep", name="first", cpus=0.5, memory="800Mi", seconds=4,
                                    steps=4))
    fleet.wait_state(first, "RUNNING")
    second = fleet.client.submit(job("noop", name="second", cpus=0.5, memory="800Mi"))
    # One read for the state and the reason: the job may be placed (and its reason cleared)
    # any time after the first job ends.
    waiting = eventually(
        lambda: (s := fleet.client.status(second))["state"] == "PENDING"
        and s["waiting"] not in (None, NOT_ACCEPTED) and s["waiting"],
        10, what="the master's reason the second job waits")
    assert "memory" in waiting, waiting
    assert fleet.wait_job(first, 60)["state"] == "SUCCEEDED"
    final = fleet.wait_job(second, 60)
    assert final["state"] == "SUCCEEDED"
    assert final["started_at"] >= fleet.client.status(first)["finished_at"]


def test_nodes_json_shows_configured_capacity_and_moving_usage(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1", cpus=1, memory="1Gi", cores=[0])
    fleet.node("node-2", cpus=1, memory="1536Mi", cores=[1])
    nodes = {n["node"]: n for n in json.loads(fleet.cli("nodes", "--json", check=True).stdout)}
    assert nodes["node-1"]["capacity"]["cpus"] == 1
    assert nodes["node-1"]["capacity"]["memory"] == 2**30
    assert nodes["node-2"]["capacity"]["memory"] == 1536 * 2**20
    assert nodes["node-1"]["capacity"]["cpuset"] == [0]
    job_id = fleet.client.submit(job("burn_cpu", seconds=8))
    node = fleet.wait_state(job_id, "RUNNING")["node"]

    def busy() -> bool:
        # An idle node measures under 0.01 CPUs; the burning job gets its whole core only on an
        # idle machine (on a shared one at load 4-5, under half of it), so the bar is well
        # above idle rather than near one CPU.
        now = {n["node"]: n for n in json.loads(fleet.cli("nodes", "--json").stdout)}
        return now[node]["usage"]["cpus"] > 0.2 and now[node]["reserved"]["cpus"] == 1

    eventually(busy, 20, interval=0.5, what="measured usage to rise")
    assert fleet.wait_job(job_id, 30)["state"] == "SUCCEEDED"


@pytest.mark.parametrize("bad, field", [
    ("unknown-field.yaml", "resources.cpu"),
    ("memory-lots.yaml", "resources.memory"),
    ("forbidden-entrypoint.yaml", "entrypoint"),
])
def test_bad_job_file_exits_nonzero_naming_the_field(fleet: Fleet, bad: str, field: str) -> None:
    fleet.node("node-1")
    out = fleet.cli("submit", str(EXAMPLES / "bad" / bad))
    assert out.returncode != 0
    assert field in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert fleet.r.zcard(keys.JOBS) == 0 and fleet.r.zcard(keys.PENDING) == 0


def test_cli_submit_wait_status_and_jobs(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    spec = fleet.settings.home_dir / "sleep.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(job("sleep", name="cli", seconds=0.3, steps=3)))
    out = fleet.cli("submit", str(spec), "--set", "params.steps=2", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout)
    assert final["state"] == "SUCCEEDED" and final["progress"]["step"] == 2
    status = json.loads(fleet.cli("status", final["id"], "--json", check=True).stdout)
    assert status["attempts"][0]["node"] == "node-1"
    listed = json.loads(fleet.cli("jobs", "--json", check=True).stdout)
    assert [j["id"] for j in listed] == [final["id"]]
