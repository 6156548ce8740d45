"""Thread alignment: a training step loop in a node limited to 1 CPU.

    python scripts/bench_threads.py             # torch and TensorFlow, ~5 min here
    python scripts/bench_threads.py --quick     # smoke run
    python scripts/bench_threads.py --frameworks torch

The node's limit is a real cgroup v1 CPU quota where /sys/fs/cgroup/cpu is writable (a child
cgroup with cpu.cfs_quota_us = cpu.cfs_period_us = 100000: one CPU, as `docker run --cpus 1`),
else `sched_setaffinity` to one core (the result file says which). Each configuration runs in
a fresh process that joins the limit before importing the framework:

- fleet: as fleet runs a `cpus: 1` job: `workers.runners.job_env(Allotment(...))` in the
  environment before the import, `runners.prepare(...)` after it, and pinned to whatever the
  supervisor's `Pinning` gives a 1-CPU job on this node: nothing under a quota alone (the node
  shares the host's cores), the one core under sched_setaffinity (the core is the node's own).
- default: the framework's own thread count (it sees the host's cores, not the quota).
- x4: threads = host cores × 4.
- threads=N for N in 1..host cores × 2: hand-set (torch.set_num_threads / TF intra-op), the
  best of which is "best hand-set".

Configurations are interleaved over `--repeats` rounds (noise hits all alike); each figure is
the median over rounds of steps/s over `--seconds` after a warm-up, and the p99 step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, Recorder, fleet_env, median, percentile  # noqa: E402

from workers.node.cores import Pinning  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


# -- confinement -------------------------------------------------------------------------------
def make_cgroup(cpus: float) -> Path | None:
    """A child cgroup with a CPU quota, or None when cgroup v1's cpu controller is not writable."""
    path = CGROUP_ROOT / f"fleet-bench-{os.getpid()}"
    try:
        path.mkdir()
        (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD_US)))
        return path
    except OSError:
        try:
            path.rmdir()
        except OSError:
            pass
        return None


def remove_cgroup(path: Path | None) -> None:
    if path is None:
        return
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def throttled(path: Path | None) -> dict[str, int]:
    if path is None:
        return {}
    stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
    return {k: int(v) for k, v in stat.items()}


# -- one configuration, in its own process -----------------------------------------------------
def child(args: argparse.Namespace) -> None:
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    mode = args.mode
    resources = None
    if mode == "fleet":
        from workers import runners
        from workers.context import Allotment

        resources = Allotment(cpus=1.0, memory=2**30,
                              cpuset=(args.pin,) if args.pin is not None else ())
        # (a pin here is the one fleet's Pinning chose, see main())
        os.environ.update(runners.job_env(resources))
        runners.prepare(args.framework, resources)  # as the job process: before the job's code
    threads = int(mode.split("=")[1]) if mode.startswith("threads=") else None
    step = build_torch(threads) if args.framework == "torch" else build_tf(threads)
    for _ in range(args.warmup):
        step()
    times = []
    end = time.perf_counter() + args.seconds
    while (t := time.perf_counter()) < end:
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"steps": len(times), "seconds": sum(times), "times": times,
                      "threads": framework_threads(args.framework)}))


def build_torch(threads: int | None):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def build_tf(threads: int | None):  # type: ignore[no-untyped-def]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    model = tf.keras.Sequential([
        tf.keras.Input((784,)), tf.keras.layers.Dense(1024, activation="relu"),
        tf.keras.layers.Dense(1024, activation="relu"), tf.keras.layers.Dense(10),
    ])
    model.compile(optimizer="sgd",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 784)).astype("float32")
    y = rng.integers(0, 10, 256)

    def step() -> None:
        model.train_on_batch(x, y)

    return step


def framework_threads(framework: str) -> dict[str, int]:
    if framework == "torch":
        import torch

        return {"intra": torch.get_num_threads(), "inter": torch.get_num_interop_threads()}
    import tensorflow as tf

    return {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads()}


def run_config(framework: str, mode: str, cgroup: Path | None, pin: int | None,
               args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "_child", "--framework", framework, "--mode", mode,
            "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    if cgroup is not None:
        argv += ["--cgroup", str(cgroup)]
    if pin is not None:
        argv += ["--pin", str(pin)]
    env = fleet_env({"TF_CPP_MIN_LOG_LEVEL": "2"})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(var, None)  # a clean slate: only the fleet configuration sets them
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{framework} {mode} failed:\n{res.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", default="torch,tensorflow")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--affinity", action="store_true", help="use sched_setaffinity, not a cgroup")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.warmup = 1.5, 1, 2

    host = os.cpu_count() or 1
    core = sorted(os.sched_getaffinity(0))[0]
    rec = Recorder("threads", args)
    cgroup = None if args.affinity else make_cgroup(1.0)
    if cgroup is not None:
        limit, pin_all = f"cgroup v1 cpu quota {PERIOD_US}/{PERIOD_US} us (1 CPU) at {cgroup}", None
    else:
        limit, pin_all = f"sched_setaffinity to core {core}", core
    rec.set("limit", limit)
    node_cpuset = sorted(os.sched_getaffinity(0)) if pin_all is None else [pin_all]
    cores, _ = Pinning(node_cpuset, cpus=1.0).take(1.0)
    fleet_pin = cores[0] if cores else None
    rec.note(f"fleet pins its 1-CPU job to: {fleet_pin if fleet_pin is not None else 'nothing'}")
    rec.note(f"1-CPU limit: {limit}; host cores: {host}")
    sweep = [f"threads={n}" for n in range(1, 2 * host + 1)]
    modes = ["fleet", "default", f"threads={4 * host}", *sweep]
    try:
        for framework in [f.strip() for f in args.frameworks.split(",") if f.strip()]:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    pin = fleet_pin if mode == "fleet" else pin_all
                    before = throttled(cgroup)
                    out = run_config(framework, mode, cgroup, pin, args)
                    after = throttled(cgroup)
                    out["throttled"] = after.get("nr_throttled", 0) - before.get("nr_throttled", 0)
                    runs[mode].append(out)
            summary = {}
            for mode, outs in runs.items():
                rates = [o["steps"] / o["seconds"] for o in outs]
                p99 = median([percentile(o["times"], 99) for o in outs])
                summary[mode] = {"steps_s": median(rates), "p99_ms": 1e3 * p99,
                                 "p50_ms": 1e3 * median([percentile(o["times"], 50) for o in outs]),
                                 "threads": outs[0]["threads"],
                                 "throttled": sum(o["throttled"] for o in outs)}
            best = max(sweep, key=lambda m: summary[m]["steps_s"])
            label = {"fleet": "(a) fleet", "default": "(b) framework default",
                     f"threads={4 * host}": f"(c) host cores×4 = {4 * host}"}
            for mode in modes:
                s = summary[mode]
                name = label.get(mode, f"(d) hand-set {mode}" + (" ← best" if mode == best else ""))
                rec.row(framework=framework, config=name,
                        threads=f"{s['threads']['intra']}/{s['threads']['inter']}",
                        **{"steps/s": s["steps_s"],
                           "× best hand-set": s["steps_s"] / summary[best]["steps_s"],
                           "× default": s["steps_s"] / summary["default"]["steps_s"],
                           "p50 step ms": s["p50_ms"], "p99 step ms": s["p99_ms"],
                           "cfs throttled periods": s["throttled"]})
            fleet = summary["fleet"]["steps_s"]
            rec.target(f"{framework}: fleet / best hand-set ({best})",
                       fleet / summary[best]["steps_s"], 0.95, ">=")
            rec.target(f"{framework}: fleet / {framework} default", fleet / summary["default"]["steps_s"],
                       1.2, ">=")
            rec.set(f"summary_{framework}", summary)
    finally:
        remove_cgroup(cgroup)
    rec.note("threads column: intra-op/inter-op as the framework reports them after setup")
    rec.write(args.out, columns=["framework", "config", "threads", "steps/s", "× best hand-set",
                                 "× default", "p50 step ms", "p99 step ms"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        cp = argparse.ArgumentParser()
        cp.add_argument("_child")
        cp.add_argument("--framework")
        cp.add_argument("--mode")
        cp.add_argument("--seconds", type=float)
        cp.add_argument("--warmup", type=int)
        cp.add_argument("--cgroup", default=None)
        cp.add_argument("--pin", type=int, default=None)
        child(cp.parse_args())
    else:
        sys.exit(main())
