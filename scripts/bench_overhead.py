"""Training overhead: the example torch job through a real local fleet vs called directly.

    python scripts/bench_overhead.py                  # ~60 s job, 8 alternating rounds (~17 min)
    python scripts/bench_overhead.py --mode paired    # both at once, Redis + master on fleet's core
    python scripts/bench_overhead.py --quick          # ~5 s job, 1 round
    python scripts/bench_overhead.py --storage s3 --checkpoint-every 1 --hidden 4096 --batch-size 16
                                                      # checkpoints to S3 vs to a local folder

`workers.jobs.digits_torch:train` with enough epochs for `--seconds` on one CPU (calibrated
first, directly), run
- directly: a fresh `python` process that sets `runners.job_env(Allotment(cpus=1, cpuset=(c,)))`,
  pins itself to core c, calls `runners.prepare("torch", ...)`, and calls `train(ctx, ...)` with a
  JobContext writing its checkpoints to a temp dir (what the job process does, minus fleet);
  wall time = spawn → exit, measured by the parent; it exits as the job process does
  (`workers.process.jobproc.exit_now`, no interpreter teardown), which fleet's time does not include.
- through fleet: `Client.submit` to a fleet of one node (cpus 1, pinned to core c, the same
  core) → wall time = submit → `finished_at` in the job record (the client's own polling is
  not counted).
Two ways to share the machine between the sides:
- `alternate` (default): one side after the other on core c, the order swapped every round;
  fleet's control plane (Redis, the master, this script's client) is pinned to the other cores,
  as on a real fleet, where it runs beside the nodes, not inside a node's CPU limit; the node's
  own processes (Celery worker, supervisor, heartbeat, fork server) share core c with the job,
  as they share a container's limit. The overhead is median(fleet) / median(direct).
- `paired`: each round runs both sides at once, each on a core of its own, with everything of
  fleet's on its side's core (Redis and the master too: the conservative charge), the cores
  swapped every round. Both sides see the same seconds of a shared machine's load. The cores
  of a shared VM are not alike (here one takes the disk's interrupts: a job there runs ~5%
  slower, on either side), so each side is compared on the same core: the geometric mean over
  the two cores of median(fleet on it) / median(direct on it) (one round: that round's ratio).
  A fresh node is started on fleet's core each round (and stopped after), so no node of
  fleet's sits idle on the direct side's core.

`--storage s3`: both sides go through the same fleet and node (alternate mode), which
uploads every committed checkpoint to the store; the store differs: the embedded S3
(SeaweedFS, started here, pinned with Redis and the master off the job's core, as a store
elsewhere would be) or the default local directory (the artifact folder itself: no copy). The
store's URL is published before each run, and the node reads it for each attempt. The
overhead is median(S3) / median(local): what moving checkpoints off the host costs a job.

The job: the example's MLP on digits, 4-9 ms an epoch here, reporting every epoch (100-250
reports a second, each relayed to Redis by the supervisor) and checkpointing every
`--checkpoint-every` epochs (100: about twice a second, each checkpoint written and fsynced).
`--checkpoint-every 1` is the example's default: hundreds of checkpoints and three times as
many fsyncs a second, which makes the run mostly a measurement of the disk (its waits are
10-20% of the wall time, and move by as much between runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, Recorder, fleet_env, median  # noqa: E402

ENTRY = "workers.jobs.digits_torch:train"
DIRECT = r"""
import json, os, sys, threading, time
from pathlib import Path
core, epochs, every, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
extra = json.loads(sys.argv[5])
from workers import runners
from workers.context import Allotment, JobContext
res = Allotment(cpus=1.0, memory=2**30, cpuset=(core,))
os.environ.update(runners.job_env(res))
os.sched_setaffinity(0, {core})
runners.prepare("torch", res)
from workers.jobs.digits_torch import train
ctx = JobContext(job_id="direct-00000000", attempt=1, resources=res, workdir=workdir,
                 checkpoint_dir=workdir / "ckpt", emit=lambda e: None, stop=threading.Event())
t0 = time.perf_counter()
out = train(ctx, epochs=epochs, checkpoint_every=every, **extra)
t = os.times()
print(json.dumps({"train_s": time.perf_counter() - t0, "accuracy": out["accuracy"],
                  "job_cpu_s": t.user + t.system}))
from workers.process.jobproc import exit_now
exit_now(0)  # the job process's own exit: no interpreter teardown (~0.4 s with torch loaded)
"""


def direct(core: int, epochs: int, every: int, extra: dict[str, Any] | None = None,
           ) -> dict[str, float]:
    """Run the job directly on `core`; its own CPU time comes from the process itself (this
    script may reap other children meanwhile: a node stopped in paired mode)."""
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})  # this thread only: the child starts on its core
        start = time.perf_counter()
        try:
            res = subprocess.run(
                [sys.executable, "-c", DIRECT, str(core), str(epochs), str(every), str(work),
                 json.dumps(extra or {})],
                capture_output=True, text=True, env=fleet_env(), timeout=1800)
        finally:
            os.sched_setaffinity(0, mine)
        wall = time.perf_counter() - start
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        return {"wall_s": wall, **json.loads(res.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` to `cores` (sched_setaffinity moves one thread; new threads
    inherit their creator's)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, FileNotFoundError):
            pass


def node_cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped) CPU seconds of a node process and its live descendants. Own: their time
    on the CPU, i.e. what fleet's node (the worker, supervisor, heartbeat and fork server)
    spent, all on the job's own core. Reaped: the time of children they have reaped; the fork
    server reaps each job process, so its delta around a job is the job's own CPU time."""
    import psutil

    top = psutil.Process(pid)
    own = reaped = 0.0
    for proc in [top, *top.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        own += t.user + t.system
        reaped += t.children_user + t.children_system
    return own, reaped


def through_fleet(client, epochs: int, every: int, node_pid: int,  # type: ignore[no-untyped-def]
                  extra: dict[str, Any] | None = None) -> dict[str, float]:
    spec = {"name": "bench-overhead", "entrypoint": ENTRY, "framework": "torch",
            "params": {"epochs": epochs, "checkpoint_every": every, **(extra or {})},
            "resources": {"cpus": 1, "memory": "1Gi"}, "timeout": 3600, "max_retries": 0}
    node_cpu, job_cpu = node_cpu_seconds(node_pid)
    submitted = time.time()
    job_id = client.submit(spec)
    final = client.wait(job_id, timeout=3600)
    own, reaped = node_cpu_seconds(node_pid)
    node_cpu, job_cpu = own - node_cpu, reaped - job_cpu
    if final["state"] != "SUCCEEDED":
        raise RuntimeError(f"fleet job {job_id} ended {final['state']}: {final.get('error')}")
    return {"wall_s": float(final["finished_at"]) - submitted,
            "run_s": float(final["finished_at"]) - float(final["started_at"]),
            "node_cpu_s": node_cpu, "job_cpu_s": job_cpu,
            "accuracy": final["result"]["accuracy"]}


def paired_ratio(rows: dict[str, list[dict[str, Any]]], ratios: list[float]) -> tuple[float, str]:
    """Each side against the other on the same core: the geometric mean over cores of
    median(fleet on it) / median(direct on it); the rounds' median ratio if a core lacks a
    side (a single round)."""
    per_core = []
    for core in sorted({r["core"] for r in rows["fleet"]}):
        f = [r["wall_s"] for r in rows["fleet"] if r["core"] == core]
        d = [r["wall_s"] for r in rows["direct"] if r["core"] == core]
        if not d:
            return median(ratios), "median of the rounds' fleet/direct"
        per_core.append(median(f) / median(d))
    return (math.prod(per_core) ** (1 / len(per_core)),
            "per core median(fleet)/median(direct), geometric mean: "
            + ", ".join(f"{x:.3f}" for x in per_core))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="target job length on one CPU")
    p.add_argument("--epochs", type=int, default=None, help="fix the epochs (skips calibration)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="epochs between checkpoints (the example's default is 1)")
    p.add_argument("--repeats", type=int, default=8, help="rounds (paired: even, so that each "
                   "side runs as often on each core); fewer cannot tell 3%% from this "
                   "machine's noise")
    p.add_argument("--mode", choices=("alternate", "paired"), default="alternate",
                   help="one side after the other on one core, fleet's Redis and master on the "
                        "others; or both sides at once on two cores (swapped each round), "
                        "fleet's Redis and master on its job's core")
    p.add_argument("--storage", choices=("s3",), default=None,
                   help="compare the fleet with its store in the embedded S3 against the same "
                        "fleet with the local directory store, both through fleet (alternate "
                        "mode; no direct side)")
    p.add_argument("--hidden", type=int, default=None, help="the MLP's width (job param)")
    p.add_argument("--batch-size", type=int, default=None, help="job param")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 5.0, 1
    extra = {k: v for k, v in (("hidden", args.hidden), ("batch_size", args.batch_size))
             if v is not None}
    sides = ("direct", "fleet")
    if args.storage:
        if args.mode != "alternate":
            p.error("--storage compares two fleets' stores: --mode alternate only")
        sides = ("local", "s3")

    from fleet.client import Client
    from fleet.drivers.base import NodeShape
    from fleet.drivers.local import LocalDriver
    from fleet.drivers.processes import stop_processes
    from fleet.drivers.redis_server import new_server
    from fleet.drivers.s3_server import S3Server
    from fleet.settings import Settings
    from fleet.store import published

    rec = Recorder("overhead", args)
    cores = sorted(os.sched_getaffinity(0))
    if args.mode == "paired" and len(cores) < 2:
        p.error("--mode paired needs two usable cores; use --mode alternate")
    epochs = args.epochs
    if epochs is None:
        # two probes: the slope excludes the fixed start-up cost inside train()
        small, big = (direct(cores[0], n, args.checkpoint_every, extra) for n in (20, 220))
        per_epoch = (big["train_s"] - small["train_s"]) / 200
        epochs = max(1, round(args.seconds / per_epoch))
        rec.note(f"calibration: {per_epoch * 1e3:.1f} ms per epoch → {epochs} epochs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-fleet-"))
    server = new_server(tmp / "redis").start()
    assert server.process is not None
    control = [server.process.pid, os.getpid()]  # with the master's: pinned to a core below
    settings = Settings(home=tmp / "home", redis_url=server.url)
    stores: dict[str, Settings] = {}
    s3 = None
    if args.storage:  # the S3 server is the control plane's: off the job's core too
        s3 = S3Server(tmp / "s3").start()
        assert s3.process is not None
        control.append(s3.process.pid)
        settings = settings.model_copy(update={"s3_credentials_file": s3.credentials_file})
        stores = {"local": settings, "s3": settings.model_copy(
            update={"storage": f"s3://{s3.bucket}/", "s3_endpoint": s3.endpoint})}
    driver = LocalDriver(settings)
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    ratios: list[float] = []
    try:
        master_pid = driver.start_master(server.url)
        client = Client(settings)
        shape = NodeShape(1.0, 2 * 2**30)

        def record(k: int, side: str, core: int, r: dict[str, Any]) -> None:
            rows[side].append({**r, "core": core})
            rec.row(round=k + 1, path=side, core=core, epochs=epochs, **{
                "wall s": r["wall_s"], "accuracy": r["accuracy"],
                "job CPU s": r["job_cpu_s"], "node CPU s": r.get("node_cpu_s", "")})

        if args.mode == "alternate":
            core = cores[0]
            node_pid = driver.start_node("node-1", shape, server.url, [core])
            driver.wait_for_nodes({"node-1"}, timeout=60, client=client.r)
            if len(cores) > 1:  # the control plane off the job's core, as on a real fleet
                for pid in (*control, master_pid):
                    pin_process(pid, set(cores[1:]))
            for k in range(args.repeats):
                for side in sides if k % 2 == 0 else sides[::-1]:
                    if side == "direct":
                        record(k, side, core, direct(core, epochs, args.checkpoint_every, extra))
                        continue
                    if side in stores:  # the nodes read the store's URL for each attempt
                        published.write(client.r, stores[side])
                    record(k, side, core, through_fleet(client, epochs, args.checkpoint_every,
                                                        node_pid, extra))
        else:
            for k in range(args.repeats):
                fleet_core, direct_core = (cores[0], cores[1]) if k % 2 == 0 else (cores[1], cores[0])
                node = f"node-{k + 1}"
                node_pid = driver.start_node(node, shape, server.url, [fleet_core])
                driver.wait_for_nodes({node}, timeout=60, client=client.r)
                for pid in (*control, master_pid):
                    pin_process(pid, {fleet_core})
                with ThreadPoolExecutor(1) as pool:
                    running = pool.submit(direct, direct_core, epochs, args.checkpoint_every)
                    by_fleet = through_fleet(client, epochs, args.checkpoint_every, node_pid)
                    by_hand = running.result()
                record(k, "direct", direct_core, by_hand)
                record(k, "fleet", fleet_core, by_fleet)
                ratios.append(by_fleet["wall_s"] / by_hand["wall_s"])
                stop_processes([driver.procs.pop(node_pid)])  # deregisters: gone from placement
    finally:
        stop_processes(list(driver.procs.values()))
        server.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    d = median([r["wall_s"] for r in rows[sides[0]]])
    f = median([r["wall_s"] for r in rows[sides[1]]])
    ratio, how = (paired_ratio(rows, ratios) if ratios
                  else (f / d, f"median {sides[1]} / median {sides[0]}"))
    rec.row(round="median", path=f"{sides[1]} / {sides[0]} ({how})", epochs=epochs,
            **{"wall s": ratio})
    node_cpu = median([r["node_cpu_s"] for r in rows[sides[1]]])
    rec.set("node_cpu_s", node_cpu)
    rec.set("ratios", ratios)
    # The noise-free part of the overhead: CPU the node spent on the job's core while it ran.
    rec.note(f"node CPU beside the job: {node_cpu:.2f} s = {100 * node_cpu / d:.2f}% of the "
             f"{sides[0]} run")
    rec.set("direct_wall_s", d)
    rec.set("fleet_wall_s", f)
    rec.target(f"{sides[1]} wall / {sides[0]} wall − 1 (overhead)", ratio - 1, 0.03, "<=")
    rec.note(f"overhead {100 * (ratio - 1):+.1f}% ({args.mode}: {how}; medians {f:.1f} s "
             f"{sides[1]}, {d:.1f} s {sides[0]}; a checkpoint every {args.checkpoint_every} "
             f"epochs; job params {extra or 'default'})")
    rec.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
