"""Nothing the master or a worker reads can kill it; a master that is down is visible.

Garbage is written with the operator credential into every kind of key the master and the
workers read, while a real fleet (a private Redis, a real master, real worker nodes) serves
real jobs; then the same processes must be alive and serve new jobs to the end.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleet.drivers.redis_server import RedisServer
from fleet.observe.metrics import read_snapshot
from fleet.spec import parse_spec
from fleet.store import keys, records, registry
from fleet.store.jobstore import JobStore
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration

GARBAGE_RECORDS = 1000


def job_spec(entrypoint: str = "noop", cpus: float = 0.5, **params: Any) -> dict:
    return {"name": "ok", "entrypoint": f"workers.jobs.synthetic:{entrypoint}",
            "resources": {"cpus": cpus, "memory": "64Mi"}, "params": params}


def alive(fleet: Fleet, pid: int) -> bool:
    return fleet.driver.procs[pid].poll() is None


def test_a_negative_allocation_no_longer_kills_the_master(fleet: Fleet) -> None:
    """One forged write: a ghost entry with negative amounts on a live node."""
    master = fleet.master()
    fleet.node("node-1", cpus=1.0)
    incarnation = registry.live_reports(fleet.r)[0]["incarnation"]
    fleet.r.hset(keys.node_alloc("node-1"), "ghost", json.dumps(
        {"attempt": 1, "incarnation": incarnation, "cpus_m": -4000, "memory": -8589934592,
         "gpus": 0}))
    # Four 1-CPU jobs on a 1-CPU node: had the -4 CPUs counted, they would run at once.
    ids = [fleet.client.submit(job_spec("sleep", cpus=1.0, seconds=0.5, steps=2))
           for _ in range(4)]
    finals = [fleet.wait_job(j, 60) for j in ids]
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * 4
    spans = sorted((f["started_at"], f["finished_at"]) for f in finals)
    assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:], strict=False)), spans
    assert alive(fleet, master)
    assert not fleet.r.hexists(keys.node_alloc("node-1"), "ghost")  # repaired: no job backs it
    assert int(fleet.r.hget(keys.BAD_RECORDS, "alloc") or 0) >= 1


# -- the Lua steps, on their own -------------------------------------------------------------
def one_node(r: redis.Redis, cpus_m: int = 1000) -> None:
    r.hset(keys.node("n1"), mapping={"incarnation": "inc", "capacity": json.dumps(
        {"cpus_m": cpus_m, "memory": 2**31, "gpus": 0}), "report": "{}"})


@pytest.mark.parametrize("garbage", ["string", "hash"])
def test_garbage_at_a_job_id_before_the_master_takes_its_entry_loses_nothing(
        fleet: Fleet, garbage: str) -> None:
    """An acknowledged submission whose id was written over before the master read the intake
    is not taken for a duplicate: the key is moved aside and the job still runs."""
    fleet.node("node-1")
    job_id = fleet.client.submit(job_spec())  # no master yet: it waits in the intake
    if garbage == "string":
        fleet.r.set(keys.job(job_id), "\x00garbage")
    else:
        fleet.r.hset(keys.job(job_id), mapping={"state": "SUCCEEDED", "spec": "{not json"})
    fleet.master()

    def done() -> str | None:
        try:
            status = fleet.client.status(job_id)
        except records.BadRecord:  # until the master moves the garbage aside
            return None
        return status["state"] if status["terminal"] else None

    assert eventually(done, 60, what=f"{job_id} to end") == "SUCCEEDED"


def test_reserve_refuses_a_node_whose_allocations_it_cannot_read(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    store = JobStore(r)
    one_node(r)
    spec = parse_spec(job_spec(cpus=1.0), allowlist=["workers.jobs"])
    for bad in (b'{"attempt": 1, "incarnation": "inc", "cpus_m": -4000, "memory": 0}',
                b"not json", b'{"attempt": 1, "incarnation": "inc", "cpus_m": "0", "memory": 0}'):
        r.hset(keys.node_alloc("n1"), "ghost", bad)
        job = store.submit(spec)
        assert store.reserve(job, "n1", "inc", {}) == (0, "node allocations unreadable")
    r.delete(keys.node_alloc("n1"))
    r.set(keys.node_alloc("n1"), "a string")  # written over with another type
    assert store.reserve(job, "n1", "inc", {}) == (0, "node allocations unreadable")
    r.delete(keys.node_alloc("n1"))
    assert store.reserve(job, "n1", "inc", {})[0] == 1  # repaired: it fits again


def test_an_attempt_record_json_cannot_hold_again_does_not_strand_a_placement(
        redis_server: RedisServer) -> None:
    # Found by the fuzz below: reserve placed the job, then failed re-encoding its garbage
    # attempt record (inf), and Redis kept the half-done step: PLACED with no task, for ever.
    r = redis.Redis.from_url(redis_server.url)
    store = JobStore(r)
    one_node(r)
    job = store.submit(parse_spec(job_spec(cpus=1.0), allowlist=["workers.jobs"]))
    r.hset(keys.job_attempts(job), "1", b'{"attempt": 1, "x": 1e999, "y": [[[[[[[[[[1]]]]]]]]]]}')
    assert store.reserve(job, "n1", "inc", {})[0] == 1
    record = json.loads(r.hget(keys.job_attempts(job), "1"))
    assert record["node"] == "n1" and "x" not in record
    assert r.zscore(keys.PLACING, job) is not None  # the master's index of placed jobs has it


def test_a_repaired_allocation_comes_from_the_job_record_or_goes(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    store = JobStore(r)
    one_node(r, cpus_m=4000)
    held = store.submit(parse_spec(job_spec(cpus=1.5), allowlist=["workers.jobs"]))
    assert store.reserve(held, "n1", "inc", {})[0] == 1
    r.hset(keys.node_alloc("n1"), mapping={held: b"garbage", "ghost": b"garbage"})
    assert store.repair_alloc("n1", held) == "rewritten"
    assert json.loads(r.hget(keys.node_alloc("n1"), held)) == {
        "attempt": 1, "incarnation": "inc", "cpus_m": 1500, "memory": 2**26, "gpus": 0}
    assert store.repair_alloc("n1", "ghost") == "dropped"  # no job backs it
    # A holder whose own request is unreadable is given the whole node: never less than it holds.
    r.hset(keys.job(held), "request", "garbage")
    r.hset(keys.node_alloc("n1"), held, b"garbage")
    assert store.repair_alloc("n1", held) == "rewritten"
    assert json.loads(r.hget(keys.node_alloc("n1"), held))["cpus_m"] == 4000
    # Ended: its entry goes.
    r.hset(keys.job(held), "state", "SUCCEEDED")
    assert store.repair_alloc("n1", held) == "dropped" and not r.hexists(keys.node_alloc("n1"), held)


# -- the fuzz ------------------------------------------------------------------------------
def garbage_values(rng: random.Random, incarnation: str) -> list[bytes]:
    """Malformed values of every sort: wrong types, bad JSON, negative/huge/NaN numbers,
    missing fields, binary, huge strings, deep nesting."""
    alloc = {"attempt": 1, "incarnation": incarnation, "cpus_m": 1000, "memory": 2**28,
             "gpus": 0}
    numbers = [-1, -4000, 10**30, 1e308, float("nan"), float("inf"), -0.5, "12", None, True,
               [], {}]
    values: list[bytes] = [
        b"", b"\x00\xff\xfe\x80", b"not json", b"[]", b"{}", b"null", b"42", b'"text"', b"{",
        b"[" * 5000 + b"]" * 5000, b"x" * rng.choice([1000, 100_000]), bytes(range(256)),
        json.dumps({"a": 1}).encode(),
    ]
    for field in alloc:
        for n in rng.sample(numbers, 3):
            values.append(json.dumps({**alloc, field: n}).encode())
        values.append(json.dumps({k: v for k, v in alloc.items() if k != field}).encode())
    return values


def write_garbage(r: redis.Redis, rng: random.Random, n: int, nodes: list[str],
                  jobs: list[str], incarnations: dict[str, str],
                  singletons_too: bool = False) -> dict[str, int]:
    """`n` garbage records across every key kind the master and the workers read (and, with
    `singletons_too`, each of the fleet's singleton keys written over once); returns how many
    of each kind were written."""
    values = garbage_values(rng, incarnations[nodes[0]])

    def v() -> bytes:
        return rng.choice(values)

    def fake(prefix: str) -> str:
        return f"{prefix}-{rng.randrange(10**6):06d}"

    def job_fields() -> dict:
        base = {"id": fake("fz"), "state": rng.choice(["PENDING", "RUNNING", "PLACED", "X", ""]),
                "spec": v(), "request": v(), "attempt": rng.choice(["1", "x", "-5", "1e99"]),
                "seq": rng.choice(["1", "nan", ""]), "priority": rng.choice(["0", "999999", "p"]),
                "node": rng.choice(nodes), "submitted_at": rng.choice(["1", "nan", "-1", "inf"])}
        return {k: val for k, val in base.items() if rng.random() < 0.8}

    def wrong_type(key: str) -> None:
        r.delete(key)
        rng.choice([lambda: r.set(key, v()), lambda: r.rpush(key, v()),
                    lambda: r.sadd(key, v()), lambda: r.zadd(key, {v(): 1}),
                    lambda: r.xadd(key, {"x": v()})])()

    def score() -> float:
        return rng.choice([0.0, -1e300, 1e300, float("inf"), float("-inf"), -5.0])

    kinds: dict[str, Callable[[], Any]] = {
        # node records
        "alloc_live": lambda: r.hset(keys.node_alloc(rng.choice(nodes)),
                                     rng.choice([fake("ghost"), *jobs[-5:]]), v()),
        "alloc_fake": lambda: (r.sadd(keys.NODES, (n := fake("fake"))),
                               r.hset(keys.node_alloc(n), fake("ghost"), v())),
        "alloc_wrong_type": lambda: (r.sadd(keys.NODES, (n := fake("fake"))),
                                     wrong_type(keys.node_alloc(n))),
        "report_live": lambda: r.hset(keys.node(rng.choice(nodes)),
                                      rng.choice(["report", "capacity", "incarnation"]), v()),
        "report_fake": lambda: (r.sadd(keys.NODES, (n := fake("fake"))),
                                r.hset(keys.node(n), mapping={"report": v(), "incarnation": v(),
                                                              "capacity": v()})),
        "report_wrong_type": lambda: (r.sadd(keys.NODES, (n := fake("fake"))),
                                      wrong_type(keys.node(n))),
        "nodes_member": lambda: r.sadd(keys.NODES, rng.choice([v()[:300], b"\x00", b"x" * 500])),
        "history": lambda: r.rpush(keys.node_history(rng.choice(nodes)), v()),
        "drain_fake": lambda: wrong_type(keys.node_drain(fake("fake"))),
        "queue_message": lambda: r.lpush(keys.node_queue(rng.choice(nodes)), v()),
        # job records
        "pending_ghost": lambda: r.zadd(keys.PENDING, {rng.choice([fake("fz"), v()[:200]]): score()}),
        "pending_bad_job": lambda: (r.hset(keys.job(j := fake("fz")), mapping=job_fields()),
                                    r.zadd(keys.PENDING, {j: score()})),
        "pending_wrong_type": lambda: (wrong_type(keys.job(j := fake("fz"))),
                                       r.zadd(keys.PENDING, {j: score()})),
        "job_field": lambda: r.hset(keys.job(fake("fz")), mapping=job_fields()),
        "jobs_member": lambda: r.zadd(keys.JOBS, {rng.choice([fake("fz"), v()[:200]]): score()}),
        "placing_member": lambda: r.zadd(keys.PLACING, {fake("fz"): score()}),
        "attempts": lambda: r.hset(keys.job_attempts(rng.choice([fake("fz"), *jobs])),
                                   rng.choice(["1", "2", "x"]), v()),
        "attempts_wrong_type": lambda: wrong_type(keys.job_attempts(fake("fz"))),
        "metrics": lambda: r.rpush(keys.job_metrics(rng.choice([fake("fz"), *jobs])), v()),
        "metrics_wrong_type": lambda: wrong_type(keys.job_metrics(fake("fz"))),
        "cancel_fake": lambda: wrong_type(keys.job_cancel(fake("fz"))),
        "event": lambda: r.xadd(keys.EVENTS, {"event": v()[:100], "job": v()[:100],
                                              "time": rng.choice([b"x", b"inf", b"-1", v()[:50]]),
                                              "attempt": v()[:20]}),
    }
    # Singletons written over with another type (or a value no master wrote): once each.
    singletons: dict[str, Callable[[], Any]] = {
        "lease": lambda: r.set(keys.MASTER_LEASE, v()[:100] or b"x"),
        "wake": lambda: wrong_type(keys.WAKE),
        "events": lambda: (r.delete(keys.EVENTS), r.set(keys.EVENTS, v())),
        "sequence": lambda: r.set(keys.SEQUENCE, b"not a number"),
        "nodes": lambda: (r.delete(keys.NODES), r.set(keys.NODES, v())),
        "pending": lambda: (r.delete(keys.PENDING), r.set(keys.PENDING, v())),
        "placing": lambda: (r.delete(keys.PLACING), r.rpush(keys.PLACING, v())),
        "jobs": lambda: (r.delete(keys.JOBS), r.set(keys.JOBS, v())),
    }
    plan = [*singletons] if singletons_too else []
    plan += rng.choices(list(kinds), k=n - len(plan))
    rng.shuffle(plan)
    written: dict[str, int] = {}
    for kind in plan:
        for _ in range(20):  # a write Redis refuses (a NaN score, a key written over by another
            try:             # kind) is replaced by another
                (singletons.get(kind) or kinds[kind])()
            except redis.exceptions.ResponseError:
                kind = rng.choice(list(kinds))
                continue
            written[kind] = written.get(kind, 0) + 1
            break
    return written


def test_garbage_in_every_key_kind_kills_no_master_or_worker(fleet: Fleet) -> None:
    master = fleet.master()
    nodes = ["node-1", "node-2"]
    workers = [fleet.node(n, cpus=1.0, cores=[i % 2]) for i, n in enumerate(nodes)]
    incarnations = {r["node"]: r["incarnation"] for r in registry.live_reports(fleet.r)}
    rng = random.Random(14)

    # Live traffic: a producer submitting short jobs the whole time the garbage goes in.
    traffic: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                traffic.append(fleet.client.submit(job_spec("sleep", seconds=0.3, steps=3)))
            except Exception:  # noqa: BLE001 - an index written over refuses a submit for a moment
                pass
            stop.wait(0.2)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    written: dict[str, int] = {}
    try:
        for i in range(10):  # in bursts, between which the fleet keeps working
            burst = write_garbage(fleet.r, rng, GARBAGE_RECORDS // 10, nodes,
                                  traffic or ["none-0"], incarnations, singletons_too=i == 5)
            for kind, count in burst.items():
                written[kind] = written.get(kind, 0) + count
            time.sleep(0.5)
    finally:
        stop.set()
        producer.join(10)
    assert sum(written.values()) >= GARBAGE_RECORDS * 0.95, written
    print(f"garbage written: {written}; live jobs submitted meanwhile: {len(traffic)}")

    # Every process that ran before runs still (no death, no restart).
    assert alive(fleet, master), "the master died"
    assert all(alive(fleet, w) for w in workers), "a worker died"

    # Every job acknowledged meanwhile ends, and succeeds; 20 normal jobs submitted after too.
    def ended() -> bool:
        return all(fleet.client.status(j)["terminal"] for j in traffic)

    try:
        eventually(ended, 60, interval=0.5, what="the jobs submitted during the fuzz to end")
    finally:
        unfinished = {j: (s["state"], s["node"], s["waiting"], s["error"])
                      for j in traffic if not (s := fleet.client.status(j))["terminal"]}
        print(f"unfinished: {unfinished}")
        if unfinished:
            for st in registry.node_states(fleet.r):
                if st["node"] in nodes:
                    print(st["node"], {k: st[k] for k in ("bad_alloc", "unreadable", "draining")},
                          fleet.r.hgetall(keys.node_alloc(st["node"])),
                          fleet.r.hgetall(keys.node(st["node"])).keys())
    during = {j: fleet.client.status(j)["state"] for j in traffic}
    assert set(during.values()) == {"SUCCEEDED"}, during
    time.sleep(2 * fleet.settings.heartbeat_interval + 1)  # the master's guard runs once a second
    after = [fleet.client.submit(job_spec()) for _ in range(20)]
    finals = {j: fleet.wait_job(j, 60)["state"] for j in after}
    assert set(finals.values()) == {"SUCCEEDED"}, finals
    assert alive(fleet, master) and all(alive(fleet, w) for w in workers)
    assert fleet.client.master_status()["up"] is True

    # The read commands still work, and the bad records were counted.
    for args in (["jobs"], ["jobs", "--json"], ["nodes"], ["nodes", "--json"], ["top", "--once"],
                 ["status", after[0]], ["explain", after[0]], ["status", traffic[0]],
                 ["events", "--limit", "2000"]):
        done = fleet.cli(*args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    counted = {keys.decode(k): int(v) for k, v in fleet.r.hgetall(keys.BAD_RECORDS).items()}
    print(f"bad records counted by the master: {counted}")
    assert counted.get("alloc", 0) > 0 and counted.get("job", 0) > 0, counted
    scraped = read_snapshot(fleet.r)  # the exporter reads every job record, garbage included
    assert scraped.bad_records["master"] == counted and scraped.master_up
    errors = int(fleet.r.get(keys.MASTER_ERRORS) or 0)
    print(f"master rounds that failed and went on: {errors}")
    log = (fleet.driver.logs / "master.log").read_text(errors="replace")
    for part in log.split("a master round failed")[1:4]:
        print("a master round failed" + part[:3000])


# -- a master that is down is visible ----------------------------------------------------
def test_a_dead_master_is_named_by_the_read_commands_until_one_leads(fleet: Fleet) -> None:
    master = fleet.master()
    fleet.node("node-1")
    job = fleet.client.submit(job_spec())
    assert fleet.wait_job(job, 60)["state"] == "SUCCEEDED"
    assert "no master" not in fleet.cli("jobs").stderr

    fleet.kill(master, signal.SIGKILL)
    killed_at = time.monotonic()

    def warned() -> str | None:
        done = fleet.cli("jobs")
        assert done.returncode == 0, done.stderr
        return done.stderr if "no master has held the lease for" in done.stderr else None

    line = eventually(warned, 15, interval=0.5, what="`fleet jobs` to say the master is down")
    took = time.monotonic() - killed_at
    print(f"warned {took:.1f}s after the kill (lease TTL {fleet.settings.master_lease_ttl}s): {line}")
    assert "(start one: `fleet master`, or `fleet up`)" in line
    for args in (["nodes"], ["top", "--once"], ["explain", job], ["status", job]):
        done = fleet.cli(*args)
        assert done.returncode == 0 and "no master has held the lease" in done.stderr, args
    status = json.loads(fleet.cli("status", job, "--json").stdout)
    assert status["master"]["up"] is False and status["master"]["down_for"] >= 0
    waited = fleet.client.master_status()["down_for"]
    time.sleep(1.5)
    assert fleet.client.master_status()["down_for"] >= waited + 1  # it counts up

    fleet.master()
    eventually(lambda: fleet.client.master_status()["up"], 15, what="a new master to lead")
    done = fleet.cli("jobs")
    assert done.returncode == 0 and "no master" not in done.stderr
    assert json.loads(fleet.cli("status", job, "--json").stdout)["master"]["up"] is True
