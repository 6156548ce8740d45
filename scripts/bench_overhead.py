"""Training overhead: the example torch job through a real local fleet vs called directly (issue 7).

    python scripts/bench_overhead.py            # ~60 s job, 2 interleaved rounds (~5 min)
    python scripts/bench_overhead.py --quick    # ~5 s job, 1 round

`workers.jobs.digits_torch:train` with enough epochs for `--seconds` on one CPU (calibrated
first, directly), run
- directly: a fresh `python` process that sets `runners.job_env(Resources(cpus=1, cpuset=(c,)))`,
  pins itself to core c, calls `runners.prepare("torch", ...)`, and calls `train(ctx, ...)` with a
  JobContext writing its checkpoints to a temp dir (what the job process does, minus fleet);
  wall time = spawn → exit, measured by the parent; it exits as the job process does
  (`workers.jobproc.exit_now`, no interpreter teardown), which fleet's time does not include.
- through fleet: `Client.submit` to a fleet of one node (cpus 1, pinned to core c, the same
  core) → wall time = submit → `finished_at` in the job record (the client's own polling is
  not counted).
Rounds alternate direct and fleet, so drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, Recorder, fleet_env, median  # noqa: E402

ENTRY = "workers.jobs.digits_torch:train"
DIRECT = r"""
import json, os, sys, threading, time
from pathlib import Path
core, epochs, workdir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
from workers import runners
from workers.context import JobContext, Resources
res = Resources(cpus=1.0, memory=2**30, cpuset=(core,))
os.environ.update(runners.job_env(res))
os.sched_setaffinity(0, {core})
runners.prepare("torch", res)
from workers.jobs.digits_torch import train
ctx = JobContext(job_id="direct-00000000", attempt=1, resources=res, workdir=workdir,
                 checkpoint_dir=workdir / "ckpt", emit=lambda e: None, stop=threading.Event())
t = time.perf_counter()
out = train(ctx, epochs=epochs)
print(json.dumps({"train_s": time.perf_counter() - t, "accuracy": out["accuracy"]}))
from workers.jobproc import exit_now
exit_now(0)  # the job process's own exit: no interpreter teardown (~0.4 s with torch loaded)
"""


def direct(core: int, epochs: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        before = os.times()
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", DIRECT, str(core), str(epochs), str(work)],
                             capture_output=True, text=True, env=fleet_env(), timeout=1800)
        wall = time.perf_counter() - start
        after = os.times()
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        job_cpu = (after.children_user + after.children_system
                   - before.children_user - before.children_system)
        return {"wall_s": wall, "job_cpu_s": job_cpu,
                **json.loads(res.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def through_fleet(client, epochs: int, node_pid: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    spec = {"name": "bench-overhead", "entrypoint": ENTRY, "framework": "torch",
            "params": {"epochs": epochs}, "resources": {"cpus": 1, "memory": "1Gi"},
            "timeout": 3600, "max_retries": 0}
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="target job length on one CPU")
    p.add_argument("--epochs", type=int, default=None, help="fix the epochs (skips calibration)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 5.0, 1

    from fleet.client import Client
    from fleet.drivers.base import NodeShape
    from fleet.drivers.local import LocalDriver
    from fleet.redis_server import new_server
    from fleet.settings import Settings

    rec = Recorder("overhead", args)
    core = sorted(os.sched_getaffinity(0))[0]
    epochs = args.epochs
    if epochs is None:
        # two probes: the slope excludes the fixed start-up cost inside train()
        small, big = direct(core, 20), direct(core, 220)
        per_epoch = (big["train_s"] - small["train_s"]) / 200
        epochs = max(1, round(args.seconds / per_epoch))
        rec.note(f"calibration: {per_epoch * 1e3:.1f} ms per epoch → {epochs} epochs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-fleet-"))
    server = new_server(tmp / "redis").start()
    settings = Settings(home=tmp / "home", redis_url=server.url)
    driver = LocalDriver(settings)
    rows: dict[str, list[dict]] = {"direct": [], "fleet": []}
    try:
        driver.start_master(server.url)
        node_pid = driver.start_node("node-1", NodeShape(1.0, 2 * 2**30), server.url, [core])
        client = Client(settings)
        driver.wait_for_nodes({"node-1"}, timeout=60, client=client.r)
        for k in range(args.repeats):
            order = ("direct", "fleet") if k % 2 == 0 else ("fleet", "direct")
            for side in order:
                r = (direct(core, epochs) if side == "direct"
                     else through_fleet(client, epochs, node_pid))
                rows[side].append(r)
                rec.row(round=k + 1, path=side, epochs=epochs, **{
                    "wall s": r["wall_s"], "accuracy": r["accuracy"],
                    "job CPU s": r["job_cpu_s"], "node CPU s": r.get("node_cpu_s", "")})
    finally:
        for proc in driver.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in driver.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    d = median([r["wall_s"] for r in rows["direct"]])
    f = median([r["wall_s"] for r in rows["fleet"]])
    ratio = f / d
    rec.row(round="median", path="fleet / direct", epochs=epochs, **{"wall s": ratio})
    node_cpu = median([r["node_cpu_s"] for r in rows["fleet"]])
    rec.set("node_cpu_s", node_cpu)
    # The noise-free part of the overhead: CPU the node spent on the job's core while it ran.
    rec.note(f"node CPU beside the job: {node_cpu:.2f} s = {100 * node_cpu / d:.2f}% of the "
             f"direct run (wall ratios move by several % between runs on a shared machine)")
    rec.set("direct_wall_s", d)
    rec.set("fleet_wall_s", f)
    rec.target("fleet wall / direct wall − 1 (overhead)", ratio - 1, 0.03, "<=")
    rec.note(f"overhead {100 * (ratio - 1):+.1f}% ({f - d:+.2f}s on {d:.1f}s)")
    rec.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
