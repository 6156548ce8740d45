"""The `fleet` commands, run with typer's CliRunner over a Client the test builds.

Every command takes its Client from `fleet.cli.context.client_factory`; the `fleet` fixture
swaps it for the Client of a small harness (`Harness`: a store, one node report, a master round
on demand). The harness is chosen in one place, `make_harness`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fleet.cli import context
from fleet.cli.main import app
from fleet.client import NOT_ACCEPTED, Client
from fleet.errors import NotFound
from fleet.settings import Settings

SPEC = """\
name: t
entrypoint: workers.jobs.synthetic:noop
resources:
  cpus: 1
  memory: 256Mi
"""
GIB = 2**30
pytestmark = pytest.mark.integration  # the Redis harness: a real server per test (0.3 s)


class RedisHarness:
    """A private Redis server (started as tests/integration/conftest.py starts it), node
    reports written as a worker's heartbeat writes them, rounds of a Master in this process."""

    def __init__(self, tmp_path: Path) -> None:
        from fleet.drivers.redis_server import new_server

        self.server = new_server(tmp_path / "redis", binary=Settings().redis_server).start()
        self.settings = Settings(home=tmp_path / "home", redis_url=self.server.url)
        self.client = Client(self.settings)
        self._master: Any = None

    def node(self, name: str, cpus: float = 2.0, memory: int = 2 * GIB) -> None:
        from fleet.store import registry

        report = {"node": name, "incarnation": "i", "capacity": {"cpus": cpus, "memory": memory},
                  "usage": {"cpus": 0.0, "memory": 0}}
        registry.heartbeat(self.client.r, report, ttl=600)

    def round(self) -> None:
        """One master round: the intake's requests applied, pending jobs placed."""
        if self._master is None:
            from fleet.broker import make_app
            from fleet.master.loop import Master

            self._master = Master(self.settings, self.server.client(),
                                  make_app(self.settings, self.server.url))
        self._master.step(time.time())

    def output(self, job_id: str, attempt: int, lines: list[str]) -> None:
        """Lines of an attempt's output, as the node's supervisor appends them."""
        from fleet.store import keys

        self.client.r.rpush(keys.job_logs(job_id, attempt), *lines)

    def close(self) -> None:
        self.server.stop()


Harness = RedisHarness


def make_harness(tmp_path: Path) -> Harness:
    return RedisHarness(tmp_path)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = make_harness(tmp_path)
    monkeypatch.setattr(context, "client_factory", lambda: harness.client)
    harness.node("node-1")
    yield harness
    harness.close()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(SPEC)
    return path


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def submitted(spec: Path) -> str:
    done = cli("submit", str(spec))
    assert done.exit_code == 0, done.output
    return done.stdout.strip()


def test_submit_prints_the_id_and_status_finds_the_job_in_the_intake(
        fleet: Harness, spec: Path) -> None:
    job_id = submitted(spec)
    assert job_id.startswith("t-")
    status = cli("status", job_id, "--json")
    data = json.loads(status.stdout)
    assert data["id"] == job_id and data["state"] == "PENDING" and data["waiting"] == NOT_ACCEPTED
    assert data["master"]["up"] is False
    assert "no master" in status.stderr  # no round ran: placement has stopped
    text = cli("status", job_id)
    assert f"{job_id}: PENDING  attempt 0  node -" in text.stdout
    assert f"waiting: {NOT_ACCEPTED}" in text.stdout


def test_submit_json_and_a_spec_too_big_for_every_node(fleet: Harness, spec: Path) -> None:
    done = cli("submit", str(spec), "--json")
    assert done.exit_code == 0
    assert json.loads(done.stdout)["state"] == "PENDING"
    big = cli("submit", str(spec), "--set", "resources.cpus=64")
    assert big.exit_code != 0 and "resources" in str(big.exception)


def test_a_placed_job_in_status_explain_jobs_nodes_and_top(fleet: Harness, spec: Path) -> None:
    job_id = submitted(spec)
    fleet.round()
    status = json.loads(cli("status", job_id, "--json").stdout)
    assert status["state"] == "PLACED" and status["node"] == "node-1"
    assert status["master"]["up"] is True
    explained = cli("explain", job_id)
    assert explained.exit_code == 0 and "chose node-1" in explained.stdout
    assert "* node-1" in explained.stdout and explained.stderr == ""
    why = json.loads(cli("explain", job_id, "--json").stdout)
    assert why["placement"]["node"] == "node-1" and why["waiting"] is None
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert [j["id"] for j in jobs] == [job_id]
    assert job_id in cli("jobs").stdout
    nodes = json.loads(cli("nodes", "--json").stdout)
    assert [n["node"] for n in nodes] == ["node-1"] and nodes[0]["reserved"]["cpus"] == 1
    assert "node-1" in cli("nodes").stdout
    top = cli("top", "--once")
    assert top.exit_code == 0 and "node-1" in top.stdout and "jobs: PLACED 1" in top.stdout


def test_explain_says_why_a_job_waits(fleet: Harness, spec: Path) -> None:
    first = submitted(spec)
    second = submitted(spec)
    fleet.node("node-1", cpus=1.0)  # room for one job only
    fleet.round()
    assert cli("explain", first).stdout.startswith(f"{first}: spread chose node-1")
    waits = cli("explain", second)
    assert waits.exit_code == 0 and waits.stdout.startswith(f"{second} waits: #1 in line")
    top = cli("top", "--once")
    assert "pending (1)" in top.stdout and second in top.stdout and "PLACED 1" in top.stdout


def test_cancel_of_a_pending_job(fleet: Harness, spec: Path) -> None:
    job_id = submitted(spec)
    fleet.node("node-1", cpus=0.5)  # the job fits no node now: it stays pending
    stop = threading.Event()

    def master() -> None:  # the master applies the cancel the command waits for
        while not stop.wait(0.02):
            fleet.round()

    running = threading.Thread(target=master)
    running.start()
    try:
        done = cli("cancel", job_id)
    finally:
        stop.set()
        running.join()
    assert done.exit_code == 0 and done.stdout.strip() == f"{job_id}: CANCELLED"
    assert json.loads(cli("status", job_id, "--json").stdout)["state"] == "CANCELLED"


def test_logs_prints_an_attempts_output(fleet: Harness, spec: Path) -> None:
    job_id = submitted(spec)
    fleet.round()
    fleet.output(job_id, 1, ["hello", "world"])
    done = cli("logs", job_id)
    assert done.exit_code == 0 and done.stdout == "hello\nworld\n"
    missing = cli("logs", job_id, "--attempt", "7")
    assert isinstance(missing.exception, NotFound) and "no attempt 7" in str(missing.exception)


def test_events_list_a_jobs_lifecycle(fleet: Harness, spec: Path) -> None:
    job_id = submitted(spec)
    fleet.round()
    listed = cli("events", job_id, "--json")
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["event"] for e in events] == ["submitted", "placed"]
    assert events[1]["node"] == "node-1" and events[1]["attempt"] == 1
    lines = cli("events", "--limit", "1").stdout.splitlines()
    assert len(lines) == 1 and f"{job_id} placed node=node-1" in lines[0]


def test_an_unknown_job_is_not_found(fleet: Harness) -> None:
    for command in ("status", "explain", "cancel", "logs"):
        done = cli(command, "no-such-job")
        assert isinstance(done.exception, NotFound), (command, done.output)
