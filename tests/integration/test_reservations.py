"""Invariant 3: what is reserved on a node never exceeds its capacity, under concurrent placement.

32 placer threads race to reserve jobs of random sizes on 8 nodes of random capacities through
the real `reserve.lua` on a real Redis; hypothesis draws the sizes. After every race, each
node's reservations sum to at most its capacity on every resource, and every job is either
reserved exactly once or still pending.
"""

from __future__ import annotations

import random
import threading

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.drivers.redis_server import RedisServer
from fleet.spec import JobSpec
from fleet.store import keys, registry
from fleet.store.jobstore import JobStore

pytestmark = pytest.mark.integration

NODES = 8
PLACERS = 32

node_caps = st.lists(
    st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(0, 2)),  # cpus, GiB, gpus
    min_size=NODES, max_size=NODES,
)
job_sizes = st.lists(
    st.tuples(st.sampled_from([0.25, 0.5, 1, 1.5, 2, 3]), st.integers(1, 4), st.integers(0, 1)),
    min_size=40, max_size=120,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caps=node_caps, sizes=job_sizes, seed=st.integers(0, 2**16))
def test_concurrent_placers_never_overcommit(redis_server: RedisServer, caps, sizes, seed) -> None:
    r = redis_server.client()
    r.flushall()
    store = JobStore(r)
    for i, (cpus, gib, gpus) in enumerate(caps):
        registry.heartbeat(r, {"node": f"n{i}", "incarnation": "inc",
                               "capacity": {"cpus": cpus, "memory": gib * 2**30, "gpus": gpus}},
                           ttl=60)
    ids = [
        store.submit(JobSpec(name="p", entrypoint="workers.jobs.synthetic:noop",
                             resources={"cpus": c, "memory": f"{m}Gi", "gpus": g}))
        for c, m, g in sizes
    ]
    start = threading.Barrier(PLACERS)

    def placer(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        client = redis.Redis.from_url(redis_server.url)
        mine = JobStore(client)
        start.wait()
        for _ in range(40):
            mine.reserve(rng.choice(ids), f"n{rng.randrange(NODES)}", "inc", {"policy": "race"})

    threads = [threading.Thread(target=placer, args=(k,)) for k in range(PLACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    placed: dict[str, str] = {}
    for i, (cpus, gib, gpus) in enumerate(caps):
        allocs = registry.allocations(r, f"n{i}")
        used = registry.reserved_of(allocs)
        assert used["cpus"] <= cpus + 1e-9 and used["memory"] <= gib * 2**30 and used["gpus"] <= gpus
        for job in allocs:
            assert job not in placed, f"{job} reserved on two nodes"
            placed[job] = f"n{i}"
    for job_id in ids:
        state = store.get(job_id)["state"]
        assert (state == "PLACED") == (job_id in placed)
        assert (state == "PENDING") == (r.zscore(keys.PENDING, job_id) is not None)
