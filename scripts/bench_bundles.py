"""Submit → first progress report of a job sent as a 5 MiB code bundle, cold and warm, against
the same job installed on the node.

    python scripts/bench_bundles.py [--rounds 8] [--pad-mib 5]

A private Redis (the default server), a real master and one real node (1 CPU). The job is one
small module, `benchjob.py`, whose function reports step 1 at once and returns. It runs three
ways, one job at a time on an idle fleet, interleaved round by round (the order rotates):

- installed: the module in a folder on the node's PYTHONPATH and on FLEET_ALLOWLIST (as in an
  image), submitted without a bundle;
- warm: the module in a code folder padded with a `--pad-mib` MiB file of random bytes (no
  compression helps it), submitted with `code=`: the digest stored and the node's cache holding
  it already (the folder is submitted once before the rounds), the folder not edited since;
- warm, packed anew: the same, with the client's memo of packed folders emptied first, as for
  `fleet submit` on the command line (a new process each time): the folder read and hashed;
- cold: a copy of that folder with a new salt file each round, so a new digest: packed,
  uploaded through the intake, stored by the master, fetched, verified and unpacked by the node.

"First report" is when the job's first progress entry is in the store, where `fleet status`
and `submit --wait` read it (polled every `--poll-ms`); the job's own clock at its report
call is kept too, and the submit call's own time (pack, hash, upload). Medians per way, and
the ratios warm/installed (target ≤ 1.1) and cold/installed. Writes
bench/results/bundles-<stamp>.{json,md} with the machine's details.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.bundles.memo import PACKS, SETTLE_S
from fleet.client import Client
from fleet.drivers.base import NodeShape
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import new_server
from fleet.settings import Settings
from fleet.store import keys, registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, Recorder  # noqa: E402

MODULE = "benchjob"
JOB = '''\
"""The benchmark's job: report once, at once, with this process's clock."""
import time


def first(ctx):
    ctx.report(1, at=time.time())
    return {}
'''
WAYS = ("installed", "warm", "warm-repacked", "cold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pad-mib", type=float, default=5.0)
    parser.add_argument("--poll-ms", type=float, default=2.0)
    args = parser.parse_args()
    rec = Recorder("bundles", args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        installed, folder, salted = root / "installed", root / "my-code", root / "my-code-cold"
        pad = os.urandom(int(args.pad_mib * 2**20))
        for where in (installed, folder, salted):
            where.mkdir()
            (where / f"{MODULE}.py").write_text(JOB)
        for where in (folder, salted):
            (where / "pad.bin").write_bytes(pad)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(installed), str(REPO)])  # the nodes'
        sys.path.insert(0, str(installed))  # the Client checks an installed entry point too
        server = new_server(root / "redis").start()
        settings = Settings(home=root / "home", redis_url=server.url,
                            allowlist=["workers.jobs", MODULE])
        driver = LocalDriver(settings)
        try:
            driver.start_master(server.url)
            driver.start_node("node-1", NodeShape(1.0, 2**30), server.url)
            client = Client(settings)
            deadline = time.monotonic() + 60
            while not registry.live_reports(client.r) and time.monotonic() < deadline:
                time.sleep(0.1)
            measure(rec, client, folder, salted, args)
        finally:
            stop_processes(list(driver.procs.values()), grace=10)
            server.stop()
    rec.write(columns=["way", "runs", "median_ms", "min_ms", "max_ms", "report_median_ms",
                       "submit_median_ms", "after_submit_median_ms"])


def measure(rec: Recorder, client: Client, folder: Path, salted: Path,
            args: argparse.Namespace) -> None:
    spec = {"name": "bench-bundle", "entrypoint": f"{MODULE}:first",
            "resources": {"cpus": 1, "memory": "256Mi"}}
    submits: dict[str, Callable[[], str]] = {
        "installed": lambda: client.submit(spec),
        "warm": lambda: client.submit(spec, code=folder),
        "warm-repacked": lambda: (PACKS.forget(), client.submit(spec, code=folder))[1],
        "cold": lambda: client.submit(spec, code=salted),
    }
    written = max(p.stat().st_ctime for p in folder.iterdir())
    time.sleep(max(0.0, SETTLE_S + 0.1 - (time.time() - written)))  # a folder not being edited
    for way in ("installed", "warm"):  # warm-up: imports, the fork server; the warm digest
        one(client, submits[way], args.poll_ms)
    samples: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for n in range(args.rounds):
        for way in WAYS[n % len(WAYS):] + WAYS[:n % len(WAYS)]:
            if way == "cold":
                (salted / "salt.txt").write_text(f"cold {n} {time.time_ns()}\n")
            samples[way].append(one(client, submits[way], args.poll_ms))
    medians = {}
    for way in WAYS:
        seen = [s["seen_ms"] for s in samples[way]]
        medians[way] = statistics.median(seen)
        rec.row(way=way, runs=len(seen), median_ms=round(medians[way], 1),
                min_ms=round(min(seen), 1), max_ms=round(max(seen), 1),
                report_median_ms=round(statistics.median(s["report_ms"] for s in samples[way]), 1),
                submit_median_ms=round(statistics.median(s["submit_ms"] for s in samples[way]), 1),
                after_submit_median_ms=round(statistics.median(
                    s["seen_ms"] - s["submit_ms"] for s in samples[way]), 1))
    rec.set("samples", samples)
    ratio = {way: medians[way] / medians["installed"] for way in WAYS}
    for way in WAYS[1:]:
        rec.set(f"{way.replace('-', '_')}_over_installed", round(ratio[way], 3))
    rec.target("warm / installed, submit → first report (median)", round(ratio["warm"], 3), 1.1,
               "<=")
    rec.note(f"warm, packed anew / installed: {ratio['warm-repacked']:.2f}x; cold / installed: "
             f"{ratio['cold']:.2f}x; bundle {folder_mib(folder):.2f} MiB of files")


def one(client: Client, submit: Callable[[], str], poll_ms: float) -> dict[str, float]:
    """Submit, then poll the job's metrics list until its first report is there."""
    r: Any = client.r
    t0_wall, t0 = time.time(), time.perf_counter()
    job_id = submit()
    submitted = time.perf_counter()
    key = keys.job_metrics(job_id)
    deadline = t0 + 60
    while not r.llen(key):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{job_id}: no report in 60 s: {client.status(job_id)}")
        time.sleep(poll_ms / 1000)
    seen = time.perf_counter()
    final = client.wait(job_id, timeout=60)
    if final["state"] != "SUCCEEDED":
        raise SystemExit(f"{job_id} ended {final['state']}: {final.get('error')}")
    reported_at = float(client.metrics(job_id)[0]["metrics"]["at"])
    return {"seen_ms": (seen - t0) * 1000, "report_ms": (reported_at - t0_wall) * 1000,
            "submit_ms": (submitted - t0) * 1000}


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 2**20


if __name__ == "__main__":
    main()
