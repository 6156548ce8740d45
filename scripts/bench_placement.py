"""Placement policies live: one trace, on 4 uneven local nodes, once per placement policy and
once on plain Celery with one shared queue.

    .venv/bin/python scripts/bench_placement.py --jobs 60 --time-scale 40 --seed 0

The trace comes from `scripts/make_trace.py` (seeded; its CPU and memory mix shrunk by
`--scale` to fit these nodes, times divided by `--time-scale`). Each job is
`scripts.bench_placement:work`: it touches `mib` MiB (so they are resident), then does a fixed
amount of CPU work at the duty cycle its `cpus` ask for, so a job slowed by a crowded node
takes longer, as real training does. It asks for `memory`, and really uses about 85% of it.

Every run gets a fresh Redis and 4 nodes confined alike: pinned to the same cores, and, where
the cgroup filesystem is writable, in cgroups with a CPU quota and a memory limit, so a node
that runs out of memory has its largest process killed by the kernel (an OOM kill, counted from
the cgroup's `oom_kill` counter and from the job's end). Where cgroups are read-only a watchdog
here plays the kernel: when the job processes of a node hold more than its memory it kills the
largest one.

- fleet runs: `fleet master` and `python -m workers.main` per node (the local driver), the
  fleet's policy set per run (`FLEET_POLICY`); submitted through `fleet.Client`.
- shared: one Celery queue, one worker per node (prefork, concurrency = the node's CPUs rounded
  up, prefetch 1, acks_late), each task running the same job in a child process; a job killed
  for memory is retried like fleet retries (max 2 retries), then counts as failed.

Per run: mean and p95 JCT (submit to terminal), mean wait (submit to start), makespan, OOM
kills, over-commits (samples every 0.25 s in which a node's job processes held more memory than
the node has, or its reservations exceeded its capacity), failed jobs. Writes
`bench/results/placement-<stamp>.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPES = "0.75:2Gi,0.5:512Mi,0.5:1Gi,0.25:1Gi"
# Node -> cores on a 2-core machine: each core carries 1.0 CPU of quota in all.
CORES = {"node-1": 0, "node-2": 1, "node-3": 1, "node-4": 0}
USE_FRACTION = 0.85  # of its request, what a job really holds (interpreter included)
BASE_MIB = 45  # what the job's interpreter holds before it allocates (measured: ~40-50 MiB)
SHARED_QUEUE = "bench.shared"
MAX_RETRIES = 2
SAMPLE_S = 0.25
PERIOD_S = 0.05  # duty-cycle period of the synthetic job


# -- the job ---------------------------------------------------------------------------------
def work(ctx: Any = None, mib: float = 64, cpu_seconds: float = 1.0, cpus: float = 1.0) -> dict[str, Any]:
    """Hold `mib` MiB (every page written), then burn `cpu_seconds` of CPU time at `cpus` cores'
    duty cycle (one thread). Contention (a CPU quota, a busy core) makes it take longer."""
    import numpy as np

    block = np.empty(int(mib * 2**20), dtype=np.uint8)
    block.fill(1)
    duty = min(max(cpus, 0.01), 1.0)
    used0 = time.process_time()
    step = 0
    next_report = time.monotonic() + 0.5
    while time.process_time() - used0 < cpu_seconds:
        start, c0 = time.monotonic(), time.process_time()
        x = 0
        while time.process_time() - c0 < duty * PERIOD_S:
            for _ in range(2000):
                x += 1
        rest = PERIOD_S - (time.monotonic() - start)
        if duty < 1.0 and rest > 0:
            time.sleep(rest)
        if ctx is not None and time.monotonic() >= next_report:
            step += 1
            ctx.report(step, cpu=time.process_time() - used0)
            next_report = time.monotonic() + 0.5
            if ctx.should_stop():
                return {"stopped": True}
    return {"mib": mib, "cpu_seconds": time.process_time() - used0, "touched": int(block[-1])}


def job_params(job: dict[str, Any]) -> dict[str, Any]:
    res = job["resources"]
    mib = max(USE_FRACTION * res["memory"] / 2**20 - BASE_MIB, 8.0)
    return {"mib": round(mib, 1), "cpu_seconds": round(job["duration"] * res["cpus"], 3),
            "cpus": res["cpus"]}


# -- the shared queue ------------------------------------------------------------------------
def shared_app(url: str) -> Any:
    from celery import Celery

    app = Celery("bench_shared", broker=url, backend=url)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_default_queue=SHARED_QUEUE, broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.run", bind=True)  # type: ignore[untyped-decorator]  # celery is untyped
    def run(self: Any, params: dict[str, Any], submitted_at: float) -> dict[str, Any]:
        node = os.environ.get("BENCH_NODE", "?")
        started = time.time()
        ooms = 0
        for attempt in range(1, MAX_RETRIES + 2):
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "job", json.dumps(params)],
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1"}, start_new_session=True)
            code = proc.wait()
            if code == 0:
                return {"node": node, "start": started, "end": time.time(), "ok": True,
                        "ooms": ooms, "attempts": attempt}
            if code == -signal.SIGKILL:
                ooms += 1
                continue
            break
        return {"node": node, "start": started, "end": time.time(), "ok": False, "ooms": ooms,
                "attempts": attempt}

    return app


def shared_worker_main(args: argparse.Namespace) -> None:
    """One shared-queue worker, confined as its node (cores, cgroups), then Celery's main."""
    from workers.node.confine import confine

    os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    confine(f"bench-{args.node}", args.cpus, int(args.memory))
    os.environ["BENCH_NODE"] = args.node
    app = shared_app(args.url)
    app.worker_main(["worker", "-Q", SHARED_QUEUE, "-P", "prefork",
                     f"--concurrency={max(1, math.ceil(args.cpus))}", "--prefetch-multiplier=1",
                     "-n", f"{args.node}@bench", "--without-gossip", "--without-mingle",
                     "--loglevel=WARNING"])


# -- measuring -------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Every SAMPLE_S: each node's job memory (RSS of its job processes) against its capacity,
    and its reservations; plays the OOM killer where the node has no cgroup memory limit."""

    def __init__(self, nodes: dict[str, dict[str, Any]], pids: dict[str, int], marker: str,
                 reserved: Any = None, kill: bool = False) -> None:
        super().__init__(daemon=True)
        self.nodes, self.pids, self.marker, self.reserved, self.kill = nodes, pids, marker, reserved, kill
        self.stop = threading.Event()
        self.samples = 0
        self.over_rss: dict[str, int] = {n: 0 for n in nodes}
        self.over_reserved: dict[str, int] = {n: 0 for n in nodes}
        self.peak: dict[str, int] = {n: 0 for n in nodes}
        self.watchdog_kills = 0

    def jobs_of(self, pid: int) -> list[Any]:
        import psutil

        try:
            procs = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in procs:
            try:
                if self.marker in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def run(self) -> None:
        import psutil

        while not self.stop.wait(SAMPLE_S):
            self.samples += 1
            reserved = self.reserved() if self.reserved else {}
            for node, shape in self.nodes.items():
                rss: list[tuple[int, Any]] = []
                for p in self.jobs_of(self.pids[node]):
                    try:
                        rss.append((p.memory_info().rss, p))
                    except psutil.Error:
                        pass
                total = sum(r for r, _ in rss)
                self.peak[node] = max(self.peak[node], total)
                if total > shape["memory"]:
                    self.over_rss[node] += 1
                    if self.kill and rss:
                        victim = max(rss, key=lambda t: t[0])[1]
                        try:
                            os.killpg(victim.pid, signal.SIGKILL)
                            self.watchdog_kills += 1
                        except OSError:
                            pass
                if reserved.get(node, 0) > shape["memory"] or False:
                    self.over_reserved[node] += 1


def _unfit(res: dict[str, Any], nodes: dict[str, dict[str, Any]], worker: str) -> bool:
    """Did a job land on a node smaller than its request (the last node that ran it)?"""
    node = nodes.get(worker.removeprefix("shared-"))
    if not node:
        return False
    return bool(res["memory"] > node["memory"] or res["cpus"] > node["cpus"] + 1e-9)


def cgroup_ooms(names: list[str]) -> int:
    """Sum of the oom_kill counters of this run's node cgroups (v1 memory or v2): `names` are
    `<node>-<pid>`, so other fleets' cgroups on this machine are not counted."""
    total = 0
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        if not root.is_dir():
            continue
        for name in names:
            for d in root.rglob(f"fleet-{name}"):
                for f in ("memory.oom_control", "memory.events"):
                    try:
                        for line in (d / f).read_text().splitlines():
                            if line.startswith("oom_kill "):
                                total += int(line.split()[1])
                    except OSError:
                        pass
        if total:
            break
    return total


def cgroups_writable() -> bool:
    from workers.node.cgroup import find_cgroup

    view = find_cgroup(Path("/"))
    if view is None:
        return False
    chain = view.chain("memory")
    if not chain:
        return False
    probe = chain[0] / f"bench-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def summarize(
    policy: str, jobs: list[dict[str, Any]], sampler: Sampler, ooms: int, t0: float
) -> dict[str, Any]:
    from scripts.bench_common import percentile

    done = [j for j in jobs if j.get("end")]
    jct = [j["end"] - j["submit"] for j in done]
    wait = [j["start"] - j["submit"] for j in done if j.get("start")]
    return {
        "run": policy,
        "jobs": len(jobs),
        "succeeded": sum(1 for j in jobs if j.get("ok")),
        "failed": sum(1 for j in jobs if not j.get("ok")),
        "mean_jct_s": sum(jct) / len(jct) if jct else float("nan"),
        "p95_jct_s": percentile(jct, 95),
        "mean_wait_s": sum(wait) / len(wait) if wait else float("nan"),
        "makespan_s": max(j["end"] for j in done) - t0 if done else float("nan"),
        "oom_kills": ooms,
        "ran_on_too_small_node": sum(1 for j in jobs if j.get("unfit")),
        "overcommit_rss_samples": sum(sampler.over_rss.values()),
        "overcommit_reserved_samples": sum(sampler.over_reserved.values()),
        "samples": sampler.samples,
        "peak_job_rss_mib": {n: round(v / 2**20) for n, v in sampler.peak.items()},
    }


def produce(trace: dict[str, Any], submit: Any) -> tuple[float, dict[str, float]]:
    """Submit each job at its (compressed) time; returns (t0, id -> submit time)."""
    t0 = time.time()
    times: dict[str, float] = {}
    for job in trace["jobs"]:
        delay = t0 + job["submit_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        times[job["id"]] = time.time()
        submit(job)
    return t0, times


def run_fleet(policy: str, trace: dict[str, Any], nodes: dict[str, dict[str, Any]], work_dir: Path,
              kill: bool, timeout: float) -> dict[str, Any]:
    from fleet.client import Client
    from fleet.drivers.base import NodeShape
    from fleet.drivers.local import LocalDriver
    from fleet.drivers.redis_server import new_server
    from fleet.settings import Settings
    from fleet.store import registry

    server = new_server(work_dir / "redis").start()
    settings = Settings(home=work_dir / "home", redis_url=server.url, policy=policy,
                        heartbeat_interval=0.5, heartbeat_ttl=3.0,
                        allowlist=["workers.jobs", "scripts.bench_placement"])
    driver = LocalDriver(settings)
    pids: dict[str, int] = {}
    try:
        driver.start_master(server.url)
        for name, shape in nodes.items():
            pids[name] = driver.start_node(name, NodeShape(shape["cpus"], shape["memory"]),
                                           server.url, [CORES[name]])
        client = Client(settings)
        deadline = time.monotonic() + 60
        while {r["node"] for r in registry.live_reports(client.r)} < set(nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes did not come up; logs in {driver.logs}")
            time.sleep(0.2)

        def reserved() -> dict[str, int]:
            return {s["node"]: sum(int(a.get("memory", 0)) for a in s["alloc"].values())
                    for s in registry.node_states(client.r)}

        sampler = Sampler(nodes, pids, "workers.process.jobproc", reserved, kill)
        sampler.start()
        ids: dict[str, str] = {}

        def submit(job: dict[str, Any]) -> None:
            res = job["resources"]
            spec = {"name": "bench", "entrypoint": "scripts.bench_placement:work",
                    "framework": "none", "params": job_params(job),
                    "resources": {"cpus": res["cpus"], "memory": int(res["memory"])},
                    "priority": job.get("priority", 0), "max_retries": MAX_RETRIES,
                    "timeout": int(max(60, 10 * job["duration"]))}
            ids[job["id"]] = client.submit(spec)

        t0, submitted = produce(trace, submit)
        end = time.monotonic() + timeout
        rows = []
        for tid, jid in ids.items():
            s = client.wait(jid, timeout=max(1.0, end - time.monotonic()))
            reasons = [a.get("end_reason") for a in s.get("attempts", [])]
            rows.append({"id": tid, "submit": s.get("submitted_at") or submitted[tid],
                         "start": s.get("started_at"), "end": s.get("finished_at"),
                         "ok": s["state"] == "SUCCEEDED", "node": s.get("node"),
                         "oom": sum(1 for r in reasons if r == "OOM")})
        sampler.stop.set()
        sampler.join()
        ooms = max(cgroup_ooms([f"{n}-{pids[n]}" for n in nodes]),
                   sum(r["oom"] for r in rows)) + sampler.watchdog_kills
        out = summarize(policy, rows, sampler, ooms, t0)
        out["per_job"] = rows
        return out
    finally:
        stop_all(driver.procs.values())
        server.stop()


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every node at once (warm shutdown), then SIGKILL the groups of those still up."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def run_shared(trace: dict[str, Any], nodes: dict[str, dict[str, Any]], work_dir: Path, kill: bool,
               timeout: float) -> dict[str, Any]:
    from fleet.drivers.redis_server import new_server

    server = new_server(work_dir / "redis").start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for name, shape in nodes.items():
            log = (logs / f"{name}.log").open("ab")
            procs[name] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "shared-worker", "--node",
                 f"shared-{name}", "--cpus", str(shape["cpus"]), "--memory", str(shape["memory"]),
                 "--cores", str(CORES[name]), "--url", server.url],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        app = shared_app(server.url)
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5) or []) < len(nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"shared workers did not come up; logs in {logs}")
        sampler = Sampler(nodes, {n: p.pid for n, p in procs.items()}, " job ", None, kill)
        sampler.start()
        results: dict[str, Any] = {}
        wanted = {j["id"]: j["resources"] for j in trace["jobs"]}

        def submit(job: dict[str, Any]) -> None:
            results[job["id"]] = app.send_task("bench.run", args=[job_params(job), time.time()],
                                               queue=SHARED_QUEUE)

        t0, submitted = produce(trace, submit)
        end = time.monotonic() + timeout
        rows = []
        for tid, res in results.items():
            value = res.get(timeout=max(1.0, end - time.monotonic()), interval=0.2)
            rows.append({"id": tid, "submit": submitted[tid], "start": value["start"],
                         "end": value["end"], "ok": value["ok"], "node": value["node"],
                         "oom": value["ooms"], "unfit": _unfit(wanted[tid], nodes,
                                                               value["node"])})
        sampler.stop.set()
        sampler.join()
        ooms = max(cgroup_ooms([f"bench-shared-{n}-{p.pid}" for n, p in procs.items()]),
                   sum(r["oom"] for r in rows))
        out = summarize("shared queue", rows, sampler, ooms, t0)
        out["per_job"] = rows
        return out
    finally:
        stop_all(procs.values())
        server.stop()


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = range(len(rows))
    axes[0].bar([i - 0.2 for i in x], [r["mean_jct_s"] for r in rows], 0.4, label="mean")
    axes[0].bar([i + 0.2 for i in x], [r["p95_jct_s"] for r in rows], 0.4, label="p95")
    axes[0].set_title("JCT (s): submit → terminal")
    axes[0].legend()
    axes[1].bar(x, [r["mean_wait_s"] for r in rows], color="tab:green")
    axes[1].set_title("mean wait (s)")
    axes[2].bar([i - 0.2 for i in x], [r["oom_kills"] for r in rows], 0.4, color="tab:red",
                label="OOM kills")
    axes[2].bar([i + 0.2 for i in x], [r["failed"] for r in rows], 0.4, color="tab:gray",
                label="failed jobs")
    axes[2].set_title("OOM kills, failed jobs")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    job = sub.add_parser("job", help="(internal) run one job of the shared queue")
    job.add_argument("params")
    worker = sub.add_parser("shared-worker", help="(internal) one shared-queue worker")
    for flag in ("--node", "--memory", "--cores", "--url"):
        worker.add_argument(flag, required=True)
    worker.add_argument("--cpus", type=float, required=True)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--shapes", default=SHAPES, help="nodes as cpus:memory,...")
    parser.add_argument("--scale", type=float, default=0.25, help="shrink job CPUs and memory")
    parser.add_argument("--max-duration", type=float, default=1800.0)
    parser.add_argument("--time-scale", type=float, default=40.0)
    parser.add_argument("--runs", default="spread,pack,seed,shared",
                        help="policies, and `shared` for the plain Celery queue")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, after the last submit")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.cmd == "job":
        work(None, **json.loads(args.params))
        return 0
    if args.cmd == "shared-worker":
        shared_worker_main(args)
        return 0

    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                            if os.environ.get("PYTHONPATH") else "")
    from fleet.sim.engine import compare
    from scripts.bench_common import Recorder
    from scripts.make_trace import compress, make_trace, parse_shapes

    shapes = parse_shapes(args.shapes)
    if set(CORES) != {n["name"] for n in shapes}:
        parser.error(f"--shapes must give {len(CORES)} nodes")
    trace = compress(make_trace(jobs=args.jobs, load=args.load, seed=args.seed, shapes=shapes,
                                scale=args.scale, max_duration=args.max_duration),
                     args.time_scale)
    nodes = {n["name"]: n for n in shapes}
    kill = not cgroups_writable()
    rec = Recorder("placement", args)
    rec.set("trace", trace)
    rec.note("nodes (cpus, memory, core): " + ", ".join(
        f"{n['name']} {n['cpus']:g} cpu {n['memory'] >> 20}Mi core {CORES[n['name']]}"
        for n in shapes))
    rec.note("memory limits enforced by " + ("the kernel: each node in a cgroup of its own "
             "(CPU quota + memory limit)" if not kill else "a watchdog killing the largest job "
             "process of a node over its memory (cgroups read-only here)"))
    results = []
    for run in args.runs.split(","):
        run = run.strip()
        print(f"== {run}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{run}-") as tmp:
            if run == "shared":
                row = run_shared(trace, nodes, Path(tmp), kill, args.timeout)
            else:
                row = run_fleet(run, trace, nodes, Path(tmp), kill, args.timeout)
        per_job = row.pop("per_job")
        rec.set(f"per_job_{row['run']}", per_job)
        print({k: v for k, v in row.items()}, flush=True)
        results.append(row)
        rec.row(**{k: v for k, v in row.items() if k != "peak_job_rss_mib"})
    by = {r["run"]: r for r in results}
    best = by.get("spread")
    if best:
        for other in ("shared queue", "seed", "pack"):
            if other in by:
                rec.note(f"spread / {other}: mean JCT {best['mean_jct_s'] / by[other]['mean_jct_s']:.2f}x, "
                         f"p95 JCT {best['p95_jct_s'] / by[other]['p95_jct_s']:.2f}x, "
                         f"makespan {best['makespan_s'] / by[other]['makespan_s']:.2f}x")
        if "shared queue" in by:
            rec.target("spread OOM kills", best["oom_kills"], 0, "<=")
            rec.target("spread over-commit samples", best["overcommit_rss_samples"]
                       + best["overcommit_reserved_samples"], 0, "<=")
            rec.target("shared queue OOM kills", by["shared queue"]["oom_kills"], 1, ">=")
            rec.target("spread / shared queue mean JCT",
                       best["mean_jct_s"] / by["shared queue"]["mean_jct_s"], 1.0, "<=")
        if "seed" in by:
            rec.target("spread / seed mean JCT", best["mean_jct_s"] / by["seed"]["mean_jct_s"],
                       1.0, "<=")
    sim_rows = compare(trace, [r for r in args.runs.split(",") if r != "shared"])
    rec.set("sim", sim_rows)
    rec.note("the same trace in `fleet sim` (mean JCT s): " + ", ".join(
        f"{r['policy']} {r['mean_jct']:.1f}" for r in sim_rows))
    rec.note("peak job RSS per node (MiB): " + "; ".join(
        f"{r['run']}: " + ", ".join(f"{n} {v}" for n, v in r["peak_job_rss_mib"].items())
        for r in results))
    path = rec.write(args.out, columns=["run", "jobs", "succeeded", "failed", "mean_jct_s",
                                        "p95_jct_s", "mean_wait_s", "makespan_s", "oom_kills"])
    m = rec.doc["machine"]
    chart(results, path.with_suffix(".png"),
          f"{args.jobs} jobs, 4 nodes ({args.shapes}), seed {args.seed}, time/{args.time_scale:g}; "
          f"{m['cpu_model']}, {m['cores']} cores, commit {m['git_commit'][:12]}")
    print(f"chart: {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
