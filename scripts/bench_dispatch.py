"""Dispatch cost: no-op jobs through fleet versus raw Celery on the same Redis (issue 7).

    python scripts/bench_dispatch.py            # ~3-4 min here: saturation, latency, profiles
    python scripts/bench_dispatch.py --quick    # smoke run

Both sides run on one private Redis, with the same number of worker processes (`--nodes`, each
pinned to its own core, one job at a time), the same Celery settings (`fleet.broker.make_app`:
JSON, acks_late, prefetch 1, thread pool, task events) and the same log level:

- fleet: `Client.submit` of `workers.jobs.synthetic:noop` (cpus = the node's) → master
  (placement, reserve.lua, publish to fleet.node.<N>) → worker → supervisor (claim.lua, spawns
  `python -m workers.jobproc`, polls) → finish.lua.
- raw Celery: `app.send_task` of a trivial task to one queue, consumed by `--nodes` worker
  processes (`celery worker --pool threads --concurrency 1`); the task records its start time.

Measured: throughput at saturation (N jobs submitted at once, first submit → last end), and
submit→start latency at a moderate rate (half of fleet's saturated throughput, both sides).
"start" for fleet is both the claim (the worker took the attempt: what Celery's task start is)
and the job function's first line (after the job process spawned). Per-stage medians of fleet's
path come from the job records (submitted → placed → claimed → function → finished). The job
process spawn is measured on its own. `--profile` samples the master and a node (with its job
processes) with py-spy during a separate burst, and cProfiles `Client.submit`.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import REPO, RESULTS, Recorder, fleet_env, median, percentile  # noqa: E402

RAW_QUEUE = "bench.raw"
RAW_TASK = "bench.noop"
RAW_STARTS = "bench:raw:start"  # hash task id → start time (written by the task)
NOOP = {
    "name": "bench-noop", "entrypoint": "workers.jobs.synthetic:noop", "framework": "none",
    "resources": {"cpus": 1, "memory": "256Mi"}, "max_retries": 0,
}


# -- raw Celery worker (a child process of this script) ---------------------------------------
def raw_worker_main(url: str, core: int, loglevel: str) -> None:
    import redis

    from fleet.broker import make_app
    from fleet.settings import Settings

    os.sched_setaffinity(0, {core})
    app = make_app(Settings(redis_url=url), url)
    r = redis.Redis.from_url(url)

    @app.task(name=RAW_TASK, bind=True)
    def noop(self: Any, **_: Any) -> dict:
        r.hset(RAW_STARTS, self.request.id, repr(time.time()))
        return {}

    app.worker_main(["worker", "--pool", "threads", "--concurrency", "1", "--queues", RAW_QUEUE,
                     "--hostname", f"raw{core}-{os.getpid()}@bench", "--prefetch-multiplier", "1",
                     "--events", "--without-mingle", "--without-gossip", "--loglevel", loglevel])


# -- the two systems ---------------------------------------------------------------------------
class FleetSide:
    name = "fleet"

    def __init__(self, url: str, home: Path, nodes: int, loglevel: str) -> None:
        from fleet.client import Client
        from fleet.drivers.base import NodeShape
        from fleet.drivers.local import LocalDriver
        from fleet.settings import Settings
        from fleet.spec import parse_spec

        os.environ["FLEET_REDIS_URL"] = url
        self.settings = Settings(home=home, redis_url=url)
        self.driver = LocalDriver(self.settings)
        self.client = Client(self.settings)
        self.r = self.client.r
        self.spec = parse_spec(NOOP, allowlist=self.settings.allowlist)
        self.master_pid = self.driver.start_master(url)
        cores = sorted(os.sched_getaffinity(0))
        self.node_pids = {}
        for i in range(1, nodes + 1):
            name = f"node-{i}"
            self.node_pids[name] = self.driver.start_node(
                name, NodeShape(1.0, 2 * 2**30), url, [cores[(i - 1) % len(cores)]])
        self.driver.wait_for_nodes(set(self.node_pids), timeout=60, client=self.r)

    def submit(self) -> str:
        return self.client.submit(self.spec)

    def wait_all(self, ids: list[str], timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.client.store.get_many(ids)
            if all(j.get("terminal") for j in jobs) and len(jobs) == len(ids):
                return jobs
            if time.monotonic() > deadline:
                left = [j["id"] for j in jobs if not j.get("terminal")]
                raise RuntimeError(f"fleet: {len(left)} jobs not done after {timeout}s")
            time.sleep(0.2)

    def records(self, ids: list[str], submitted: dict[str, float]) -> list[dict[str, float]]:
        jobs = {j["id"]: j for j in self.wait_all(ids, 600)}
        pipe = self.r.pipeline(transaction=False)
        from fleet import keys

        for i in ids:
            pipe.lindex(keys.job_metrics(i), 0)
        firsts = pipe.execute()
        out = []
        for i, first in zip(ids, firsts, strict=True):
            j = jobs[i]
            func = json.loads(first)["time"] if first else float("nan")
            out.append({"submit": submitted[i], "placed": float(j.get("placed_at") or "nan"),
                        "start": float(j["started_at"]), "func": func,
                        "end": float(j["finished_at"]), "state": j["state"]})
        return out

    def stop(self) -> None:
        from fleet.drivers.local import stop_children

        stop_children(list(self.driver.procs.values()))


class RawSide:
    name = "raw celery"

    def __init__(self, url: str, logs: Path, nodes: int, loglevel: str) -> None:
        import redis

        from fleet.broker import make_app
        from fleet.settings import Settings

        self.app = make_app(Settings(redis_url=url), url)
        self.r = redis.Redis.from_url(url)
        cores = sorted(os.sched_getaffinity(0))
        self.procs = []
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(nodes):
            log = (logs / f"raw-{i}.log").open("ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "_raw_worker", url, str(cores[i % len(cores)]), loglevel],
                stdout=log, stderr=subprocess.STDOUT, env=fleet_env(), start_new_session=True))
        # ready when every worker answers a ping
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = self.app.control.ping(timeout=0.5) or []
            if len(replies) >= nodes:
                break
        else:
            raise RuntimeError("raw celery workers did not start")

    def submit(self) -> str:
        return self.app.send_task(RAW_TASK, queue=RAW_QUEUE).id

    def records(self, ids: list[str], submitted: dict[str, float]) -> list[dict[str, float]]:
        deadline = time.monotonic() + 600
        while self.r.hlen(RAW_STARTS) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        starts = self.r.hmget(RAW_STARTS, ids)
        return [{"submit": submitted[i], "start": float(s), "func": float(s), "end": float(s)}
                for i, s in zip(ids, starts, strict=True) if s is not None]

    def stop(self) -> None:
        from fleet.drivers.local import stop_children

        stop_children(self.procs)


# -- measurements ------------------------------------------------------------------------------
def burst(side: Any, n: int) -> tuple[list[dict], float]:
    """Submit n at once; returns the records and the mean client-side submit call time."""
    submitted: dict[str, float] = {}
    ids = []
    t0 = time.perf_counter()
    for _ in range(n):
        now = time.time()
        job = side.submit()
        submitted[job] = now
        ids.append(job)
    call_s = (time.perf_counter() - t0) / n
    return side.records(ids, submitted), call_s


def paced(side: Any, n: int, rate: float) -> list[dict]:
    submitted: dict[str, float] = {}
    ids = []
    t0 = time.monotonic()
    for k in range(n):
        pause = t0 + k / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = time.time()
        job = side.submit()
        submitted[job] = now
        ids.append(job)
    return side.records(ids, submitted)


def throughput(recs: list[dict]) -> float:
    return len(recs) / (max(r["end"] for r in recs) - min(r["submit"] for r in recs))


def ms(values: list[float], q: float) -> float:
    return 1e3 * percentile([v for v in values if v == v], q)


def stage_medians(recs: list[dict]) -> dict[str, float]:
    return {
        "submit→placed ms": 1e3 * median([r["placed"] - r["submit"] for r in recs]),
        "placed→claimed ms": 1e3 * median([r["start"] - r["placed"] for r in recs]),
        "claimed→function ms": 1e3 * median([r["func"] - r["start"] for r in recs]),
        "function→finished ms": 1e3 * median([r["end"] - r["func"] for r in recs]),
    }


def spawn_cost(repeats: int) -> dict[str, float]:
    """The job process's fixed cost: `python -c pass` vs `python -m workers.jobproc` running
    the noop job to its result event (spawn + interpreter + imports + the job)."""
    work = Path(tempfile.mkdtemp(prefix="bench-jobproc-"))
    order = {
        "job_id": "bench-noop-00000000", "attempt": 1, "entrypoint": NOOP["entrypoint"],
        "params": {}, "framework": "none", "allowlist": ["workers.jobs"], "workdir": str(work),
        "checkpoint_dir": str(work / "ckpt"),
        "resources": {"cpus": 1, "memory": 2**28, "cpuset": [], "gpu_ids": []},
    }

    def once(argv: list[str], feed: bytes, events: bool) -> float:
        read_fd, write_fd = os.pipe()
        env = fleet_env({"FLEET_EVENT_FD": str(write_fd), "PYTHONUNBUFFERED": "1"})
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=[write_fd], env=env, cwd=work)
        os.close(write_fd)
        proc.communicate(feed)
        with os.fdopen(read_fd) as f:
            text = f.read()
        took = time.perf_counter() - start
        if events and '"result"' not in text:
            raise RuntimeError(f"jobproc gave no result: {text!r}")
        return took

    py = sys.executable
    out: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(repeats):  # interleaved, so drift in the machine's load hits both alike
        out["python -c pass"].append(once([py, "-c", "pass"], b"", False))
        out["python -m workers.jobproc (noop)"].append(
            once([py, "-m", "workers.jobproc"], json.dumps(order).encode(), True))
    shutil.rmtree(work, ignore_errors=True)
    return {k: 1e3 * median(v) for k, v in out.items()}


def import_profile(top: int = 8) -> list[tuple[str, int]]:
    """The biggest cumulative imports of the job process (python -X importtime)."""
    code = ("import workers.jobproc, fleet.spec, workers.runners, workers.context, "
            "workers.jobs.synthetic")
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                         text=True, env=fleet_env())
    rows = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        name = parts[2][1:]  # nesting shows as leading spaces after the first one
        rows.append((name, int(parts[1].strip())))
    top_level = [(n, c) for n, c in rows if not n.startswith(" ")]
    return sorted(top_level, key=lambda x: -x[1])[:top]


# -- profiles ----------------------------------------------------------------------------------
def pyspy_start(pid: int, out: Path, subprocesses: bool) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
            "--rate", "200", "--nonblocking"]
    if subprocesses:
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def summarize_collapsed(path: Path, top: int = 12) -> list[dict[str, Any]]:
    """Inclusive share of samples per function (fleet/workers code and a few library hot spots)
    from py-spy's collapsed stacks."""
    if not path.exists():
        return []
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (", 1)[0]
            where = frame.split(" (", 1)[1].rsplit(":", 1)[0] if " (" in frame else ""
            short = where.split("site-packages/")[-1].replace(str(REPO) + "/", "")
            key = f"{name} ({short})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    rows = [{"function": k, "share": v / total} for k, v in inclusive.most_common(200)
            if any(s in k for s in ("fleet/", "workers/", "subprocess.py", "importlib",
                                    "kombu/", "redis/", "celery/app", "numpy"))]
    return [{"samples": total, **r} for r in rows[:top]]


def profile_submit(side: FleetSide, n: int, top: int = 10) -> tuple[str, float]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    ids = [side.submit() for _ in range(n)]
    prof.disable()
    per_call = (time.perf_counter() - t0) / n
    side.wait_all(ids, 600)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue(), per_call


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2, help="worker processes on each side")
    p.add_argument("--jobs", type=int, default=60, help="fleet jobs per saturation burst")
    p.add_argument("--raw-jobs", type=int, default=600, help="raw Celery tasks per burst")
    p.add_argument("--latency-jobs", type=int, default=40, help="jobs per paced latency run")
    p.add_argument("--rate", type=float, default=None,
                   help="paced submit rate (jobs/s); default half of fleet's saturated rate")
    p.add_argument("--spawn-repeats", type=int, default=10)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.raw_jobs, args.latency_jobs, args.spawn_repeats = 10, 60, 8, 3

    from fleet.redis_server import new_server

    rec = Recorder("dispatch", args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    server = new_server(tmp / "redis").start()
    url = server.url
    results: dict[str, dict[str, Any]] = {}
    try:
        # fleet --------------------------------------------------------------------------------
        fleet = FleetSide(url, tmp / "fleet", args.nodes, args.loglevel)
        try:
            burst(fleet, 2 * args.nodes)  # warm-up: first job process, first placement
            recs, call = burst(fleet, args.jobs)
            results["fleet"] = {"tp": throughput(recs), "submit_call_ms": 1e3 * call,
                                "sat_stages": stage_medians(recs),
                                "failed": sum(r["state"] != "SUCCEEDED" for r in recs)}
            rate = args.rate or max(0.5, round(results["fleet"]["tp"] / 2, 1))
            lat = paced(fleet, args.latency_jobs, rate)
            results["fleet"]["lat"] = lat
            results["fleet"]["lat_stages"] = stage_medians(lat)
            if args.profile:
                prof_dir = args.out / "profiles"
                prof_dir.mkdir(parents=True, exist_ok=True)
                stamp = rec.stamp
                spies = {
                    "master": pyspy_start(fleet.master_pid, prof_dir / f"dispatch-master-{stamp}.txt",
                                          False),
                    "node": pyspy_start(fleet.node_pids["node-1"],
                                        prof_dir / f"dispatch-node-{stamp}.txt", True),
                }
                time.sleep(1.0)
                burst(fleet, args.jobs)
                for s in spies.values():
                    pyspy_stop(s)
                text, per_call = profile_submit(fleet, max(20, args.jobs // 2))
                (prof_dir / f"dispatch-submit-{stamp}.txt").write_text(text)
                rec.set("profiles", {
                    name: summarize_collapsed(prof_dir / f"dispatch-{name}-{stamp}.txt")
                    for name in spies
                })
                rec.set("submit_cprofile_top", text)
        finally:
            fleet.stop()
        # raw Celery ---------------------------------------------------------------------------
        raw = RawSide(url, tmp / "raw-logs", args.nodes, args.loglevel)
        try:
            burst(raw, 2 * args.nodes)
            recs, call = burst(raw, args.raw_jobs)
            results["raw"] = {"tp": throughput(recs), "submit_call_ms": 1e3 * call}
            results["raw"]["lat"] = paced(raw, args.latency_jobs, rate)
        finally:
            raw.stop()
        spawn = spawn_cost(args.spawn_repeats)
        imports = import_profile()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    f, r = results["fleet"], results["raw"]
    for key, label in (("raw", "raw celery"), ("fleet", "fleet")):
        d = results[key]
        lat = d["lat"]
        start = [x["start"] - x["submit"] for x in lat]
        func = [x["func"] - x["submit"] for x in lat]
        d["p50"], d["p99"] = ms(start, 50), ms(start, 99)
        rec.row(system=label, **{
            "jobs/s (saturated)": d["tp"], "× raw": d["tp"] / r["tp"] if "p50" in r else 1.0,
            "submit call ms": d["submit_call_ms"], "paced rate/s": rate,
            "submit→start p50 ms": d["p50"], "submit→start p99 ms": d["p99"],
            "submit→function p50 ms": ms(func, 50), "submit→function p99 ms": ms(func, 99),
        })
    rec.doc["rows"][1]["× raw"] = f["tp"] / r["tp"]
    rec.set("fleet_stages_saturated_ms", f["sat_stages"])
    rec.set("fleet_stages_paced_ms", f["lat_stages"])
    rec.set("fleet_failed_jobs", f["failed"])
    rec.set("jobproc_spawn_ms", spawn)
    rec.set("jobproc_imports_cumulative_us", imports)
    rec.target("fleet throughput / raw Celery", f["tp"] / r["tp"], 0.8, ">=")
    rec.target("fleet submit→start p50 / raw Celery's", f["p50"] / r["p50"], 2.0, "<=")
    rec.note("fleet stage medians at saturation (ms): "
             + ", ".join(f"{k} {v:.0f}" for k, v in f["sat_stages"].items()))
    rec.note("fleet stage medians when paced (ms): "
             + ", ".join(f"{k} {v:.1f}" for k, v in f["lat_stages"].items()))
    rec.note("job process fixed cost (median ms): "
             + ", ".join(f"{k} {v:.0f}" for k, v in spawn.items()))
    rec.note("biggest imports of the job process (cumulative ms): "
             + ", ".join(f"{n} {c / 1e3:.0f}" for n, c in imports))
    for name, rows in (rec.doc.get("profiles") or {}).items():
        if rows:
            rec.note(f"py-spy {name} ({rows[0]['samples']} samples, inclusive share): "
                     + "; ".join(f"{x['function']} {100 * x['share']:.0f}%" for x in rows))
    for d in results.values():
        d.pop("lat", None)
    rec.set("raw_results", results)
    rec.write(args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw_worker":
        raw_worker_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
