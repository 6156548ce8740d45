"""The `fleet` commands, run with typer's CliRunner over a Client the test builds.

Every command takes its Client from `fleet.cli.context.client_factory`; the `fleet` fixture
swaps in a Client over a store (`Harness`: one node report, master rounds on demand). The same
test body runs on the in-memory store (no server) and on Redis (its own server, marked
integration, as tests/unit/test_store_round.py does).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from fleet.cli import context
from fleet.cli.main import app
from fleet.client import NOT_ACCEPTED, Client
from fleet.errors import NotFound, RedisUnavailable
from fleet.master.loop import Master
from fleet.settings import Settings
from fleet.store import keys
from fleet.store.memory import MemoryStore
from fleet.store.protocol import Store
from fleet.store.redis_store import RedisStore

SPEC = """\
name: t
entrypoint: workers.jobs.synthetic:noop
resources:
  cpus: 1
  memory: 256Mi
"""
GIB = 2**30


class Harness:
    """A store with a Client over it, node reports as a worker's heartbeat writes them, and a
    master whose rounds run when the test says (it publishes nowhere: no worker runs)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.client = Client(settings, store=store)
        self.master = Master(settings, store)

    def node(self, name: str, cpus: float = 2.0, memory: int = 2 * GIB) -> None:
        report = {"node": name, "incarnation": "i", "capacity": {"cpus": cpus, "memory": memory},
                  "usage": {"cpus": 0.0, "memory": 0}}
        self.store.heartbeat(report, ttl=600)

    def round(self) -> None:
        """One master round: the intake's requests applied, pending jobs placed."""
        self.master.step(time.time())

    def output(self, job_id: str, attempt: int, lines: list[str]) -> None:
        """Lines of an attempt's output, as the node's supervisor appends them."""
        if isinstance(self.store, MemoryStore):
            self.store.append_log(job_id, attempt, *lines)
        else:
            assert isinstance(self.store, RedisStore)
            self.store.r.rpush(keys.job_logs(job_id, attempt), *lines)


@pytest.fixture
def fleet(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(store, Settings(home=tmp_path / "home"))
    monkeypatch.setattr(context, "client_factory", lambda: harness.client)
    harness.node("node-1")
    return harness


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


def test_plot_of_the_fleet_draws_the_nodes_recorded_load(fleet: Harness, tmp_path: Path) -> None:
    fleet.node("node-1")  # a second sample
    out = tmp_path / "fleet.png"
    done = cli("plot", "--fleet", "-o", str(out))
    assert done.exit_code == 0 and done.stdout.startswith("wrote ")
    assert out.stat().st_size > 0


def test_a_read_command_does_not_fail_for_the_masters_keys(
        fleet: Harness, spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submitted(spec)

    def unreadable() -> dict[str, object]:
        raise RedisUnavailable("redis unreachable")

    monkeypatch.setattr(fleet.store, "master_status", unreadable)
    done = cli("status", job_id, "--json")
    assert done.exit_code == 0 and done.stderr == ""  # no warning either way
    assert json.loads(done.stdout)["master"] == {"up": None, "leader": None, "down_for": None,
                                                 "last_seen": None}


@pytest.mark.parametrize(("raised", "line"), [
    (redis.exceptions.AuthenticationError("bad password"),
     "error: redis refused our credentials: bad password"),
    (redis.exceptions.ResponseError("WRONGTYPE"), "error: redis: WRONGTYPE"),
])
def test_a_redis_failure_outside_the_client_is_one_line_and_exit_3(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        raised: Exception, line: str) -> None:
    """A driver's or the master's own connection raises redis's errors; main prints them as
    before, though the CLI imports no redis."""
    from fleet.cli.main import main

    def failing() -> Client:
        raise raised

    monkeypatch.setattr(context, "client_factory", failing)
    monkeypatch.setattr("sys.argv", ["fleet", "nodes"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 3
    assert capsys.readouterr().err.strip() == line


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.cli.main import main

    def failing() -> Client:
        raise KeyError("a bug")

    monkeypatch.setattr(context, "client_factory", failing)
    monkeypatch.setattr("sys.argv", ["fleet", "nodes"])
    with pytest.raises(KeyError):
        main()


def test_top_redraws_until_sigterm(fleet: Harness) -> None:
    import os
    import signal

    before = signal.signal(signal.SIGTERM, lambda *_: None)  # a signal sent early kills nothing
    finished = threading.Event()

    def terminate() -> None:  # until `top` has installed its own handler and stopped
        while not finished.wait(0.3):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        done = cli("top", "--interval", "0.1")
    finally:
        finished.set()
        killer.join()
        signal.signal(signal.SIGTERM, before)
    assert done.exit_code == 0, done.output
    assert "warning: no master holds the lease" in done.stdout  # in the frame, not on stderr
    assert "node-1" in done.stdout and "jobs: no jobs" in done.stdout
