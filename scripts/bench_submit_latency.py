"""Submit → placed latency on an idle fleet: how long a job waits before the master places it.

    python scripts/bench_submit_latency.py [--jobs 40]

A private Redis (the default server), a real master and one real node (1 CPU). Jobs are
no-ops submitted one at a time, each once the previous one has ended, so the fleet is idle at
every submit. "placed" is when the job's `placed` event reaches a reader blocked on the events
stream (XREAD BLOCK), so polling adds nothing to the figure. Measured with the operator's
credential, then with the producer's (none on a server without ACL selectors) in the same
run: the ratio is what the producer's path (its own intake) costs over the operator's.
Writes bench/results/submit-latency-<stamp>.{json,md} with the machine's details.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from fleet.client import Client
from fleet.drivers.base import NodeShape
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import new_server
from fleet.settings import Settings
from fleet.store import keys, registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Recorder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    rec = Recorder("submit-latency", args)
    with tempfile.TemporaryDirectory() as tmp:
        server = new_server(Path(tmp) / "redis").start()
        settings = Settings(home=Path(tmp) / "home", redis_url=server.url)
        driver = LocalDriver(settings)
        try:
            driver.start_master(server.url)
            driver.start_node("node-1", NodeShape(1.0, 2**30), server.url)
            r = server.client()
            deadline = time.monotonic() + 60
            while not registry.live_reports(r) and time.monotonic() < deadline:
                time.sleep(0.1)
            medians = {}
            for who, url in (("operator", server.url), ("producer", server.producer_url)):
                if url is None:
                    rec.note(f"{who}: this server issues no such credential")
                    continue
                row = samples(Client(settings, redis_url=url), r, args.jobs)
                medians[who] = row["median_ms"]
                rec.row(credential=who, **row)
            if len(medians) == 2:
                rec.set("producer_over_operator", round(medians["producer"] / medians["operator"], 2))
                rec.note(f"producer/operator median: {rec.doc['producer_over_operator']}x")
        finally:
            stop_processes(list(driver.procs.values()), grace=10)
            server.stop()
    rec.write()


def samples(client: Client, redis_client: redis.Redis, jobs: int) -> dict[str, float]:
    r: Any = redis_client  # redis-py's stubs type replies as a union of every reply shape
    spec = {"name": "lat", "entrypoint": "workers.jobs.synthetic:noop"}
    client.wait(client.submit(spec), timeout=60)  # warm: imports, the fork server, scripts
    latencies = []
    for _ in range(jobs):
        last = keys.decode(r.xrevrange(keys.EVENTS, count=1)[0][0])
        t0 = time.perf_counter()
        job_id = client.submit(spec)
        placed_at = None
        while placed_at is None:
            for _, entries in r.xread({keys.EVENTS: last}, block=5000, count=100) or []:
                for entry_id, fields in entries:
                    last = keys.decode(entry_id)
                    if (keys.decode(fields[b"event"]) == "placed"
                            and keys.decode(fields[b"job"]) == job_id):
                        placed_at = time.perf_counter()
        latencies.append((placed_at - t0) * 1000)
        client.wait(job_id, timeout=60)
    latencies.sort()
    return {"jobs": jobs, "median_ms": round(statistics.median(latencies), 2),
            "p90_ms": round(latencies[int(0.9 * (jobs - 1))], 2), "max_ms": round(latencies[-1], 2)}


if __name__ == "__main__":
    main()
