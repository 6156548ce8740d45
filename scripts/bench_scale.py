"""Scale-up time: `fleet scale worker=N` from 0 to N heartbeating nodes.

    python scripts/bench_scale.py               # local driver, N=4, 3 repeats (~1-2 min)
    python scripts/bench_scale.py --quick
    python scripts/bench_scale.py --driver docker   # where a Docker engine runs

Runs the real CLI against a fleet started with `fleet up --detach --workers 0 --no-flower` in a
temporary FLEET_HOME: the clock starts just before `fleet scale worker=N` is spawned and stops
when `fleet nodes --json` (polled back to back, each call's own time is the resolution) lists N
nodes. Then `fleet scale worker=0` drains them all and the next repeat starts from 0.

Baseline in the same run: the floor for N nodes on this machine, N concurrent
`python -c "import workers.main"` (an interpreter with the worker's imports, nothing else).
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

from bench_common import REPO, RESULTS, Recorder, fleet_env, median  # noqa: E402

TARGETS_S = {"local": 5.0, "docker": 15.0}


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, cwd=REPO)


def live_nodes(env: dict[str, str]) -> int:
    res = cli(env, "nodes", "--json")
    if res.returncode != 0:
        return -1
    return len(json.loads(res.stdout or "[]"))


def floor_s(n: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import workers.main"], env=fleet_env(),
                              cwd=REPO) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.perf_counter() - start


def one_scale(env: dict[str, str], n: int, timeout: float) -> dict[str, float]:
    start = time.perf_counter()
    scale = subprocess.Popen([sys.executable, "-m", "fleet", "scale", f"worker={n}", *env_driver(env)],
                             env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    polls = []
    seen = 0
    while True:
        t = time.perf_counter()
        seen = live_nodes(env)
        polls.append(time.perf_counter() - t)
        if seen >= n:
            break
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {seen} of {n} nodes after {timeout}s")
    took = time.perf_counter() - start
    out, _ = scale.communicate(timeout=60)
    cli_s = time.perf_counter() - start  # upper bound; the CLI returns before nodes heartbeat
    return {"to_n_s": took, "poll_s": median(polls), "scale_cli_rc": scale.returncode,
            "scale_output": out.strip()[-200:], "cli_done_s": cli_s}


def env_driver(env: dict[str, str]) -> list[str]:
    return ["--driver", env["BENCH_DRIVER"]]


def scale_down(env: dict[str, str], timeout: float = 60) -> None:
    cli(env, "scale", "worker=0", *env_driver(env))
    deadline = time.monotonic() + timeout
    while live_nodes(env) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the drained worker processes exit


def measure(driver: str, n: int, repeats: int, rec: Recorder) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix=f"bench-scale-{driver}-"))
    env = fleet_env({"FLEET_HOME": str(home), "BENCH_DRIVER": driver})
    env.pop("FLEET_REDIS_URL", None)
    up = cli(env, "up", "--detach", "--workers", "0", "--no-flower", "--driver", driver,
             timeout=300)
    if up.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"fleet up --driver {driver} failed: {up.stderr.strip()[-500:]}")
    times = []
    try:
        for k in range(repeats):
            floor = floor_s(n)
            r = one_scale(env, n, timeout=120)
            times.append(r["to_n_s"])
            rec.row(driver=driver, repeat=k + 1, nodes=n, **{
                "scale→N heartbeating s": r["to_n_s"], "floor s (N× import workers.main)": floor,
                "× floor": r["to_n_s"] / floor, "poll resolution s": r["poll_s"]})
            scale_down(env)
    finally:
        cli(env, "down", "--driver", driver, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--driver", action="append", default=None,
                   help="local (default) and/or docker; docker is skipped where no engine runs")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    drivers = args.driver or ["local", "docker"]
    rec = Recorder("scale", args)
    for driver in drivers:
        if driver == "docker" and not shutil.which("docker") and not os.path.exists(
                "/var/run/docker.sock"):
            rec.note("docker driver: not measured (no Docker engine on this machine)")
            continue
        try:
            times = measure(driver, args.nodes, args.repeats, rec)
        except RuntimeError as exc:
            rec.note(f"{driver} driver: not measured ({exc})")
            continue
        rec.target(f"{driver}: scale 0→{args.nodes} median s", median(times),
                   TARGETS_S.get(driver, 15.0), "<=")
        rec.target(f"{driver}: scale 0→{args.nodes} worst s", max(times),
                   TARGETS_S.get(driver, 15.0), "<=")
    rec.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
