"""How long one placement decision takes, at 100, 1,000 and 10,000 nodes.

    python scripts/bench_decision.py            # micro-benchmark of choose(), and the simulator
    python scripts/bench_decision.py -o bench/results/decision.json

Two measurements:
- `choose()` alone, per policy, on node states drawn at random (uneven sizes, 0-100% reserved,
  a GPU share), for a random request: mean and p99 over many calls after a warm-up.
- The simulator's own figure (`decision_time_ms`, perf_counter around each choose() inside
  schedule_round) on generated traces at 100 and 10,000 nodes, load 0.8.

Targets: ≤ 0.2 ms per placement at 100 nodes, ≤ 2 ms at 10,000.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_trace import make_trace  # noqa: E402

from fleet.placement import POLICIES, NodeView, PolicyState, Request, choose  # noqa: E402
from fleet.sim.engine import simulate  # noqa: E402

GI = 2**30
TARGET_MS = {100: 0.2, 10_000: 2.0}


def random_view(rng: np.random.Generator, n: int) -> NodeView:
    cpus = rng.choice([2, 4, 8, 16, 32], size=n).astype(float)
    memory = cpus * rng.choice([2, 4, 8], size=n) * GI
    gpus = np.where(rng.random(n) < 0.25, rng.choice([4, 8], size=n), 0).astype(float)
    gpu_memory = np.where(gpus > 0, 32 * GI, 0.0)
    capacity = np.stack([cpus, memory, gpus, gpu_memory], axis=1)
    reserved = capacity * rng.random((n, 1)) * np.array([1, 1, 1, 0])
    reserved[:, 2] = np.floor(reserved[:, 2])
    usage = reserved * rng.uniform(0.5, 1.0, (n, 1))
    return NodeView(tuple(f"node-{i}" for i in range(n)), capacity, reserved, usage)


def bench_choose(n: int, calls: int, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    view = random_view(rng, n)
    requests = [
        Request(
            float(rng.choice([0.5, 1, 2, 4])),
            float(rng.choice([1, 2, 4, 8]) * GI),
            float(rng.choice([0, 0, 0, 1, 2])),
        )
        for _ in range(64)
    ]
    out = {}
    for policy in POLICIES:
        state = PolicyState.seeded(seed)
        for req in requests[:16]:  # warm-up
            choose(policy, view, req, state)
        times = np.empty(calls)
        for k in range(calls):
            req = requests[k % len(requests)]
            start = time.perf_counter()
            choose(policy, view, req, state)
            times[k] = time.perf_counter() - start
        ms = times * 1e3
        out[policy] = {"mean_ms": float(ms.mean()), "p99_ms": float(np.percentile(ms, 99))}
    return out


def bench_sim(nodes: int, jobs: int, policies: list[str]) -> dict[str, dict[str, float]]:
    trace = make_trace(nodes=nodes, jobs=jobs, load=0.8, gpus=True, seed=1)
    out = {}
    for policy in policies:
        result = simulate(trace, policy)
        out[policy] = {
            "decisions": result.decisions,
            "mean_ms": result.decision_time_ms_mean,
            "p99_ms": result.decision_time_ms_p99,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="choose() calls per policy")
    parser.add_argument("--skip-sim", action="store_true", help="only the micro-benchmark")
    parser.add_argument("-o", "--output", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
            "system": platform.platform(),
        },
        "command": " ".join(["python", *sys.argv]),
        "choose": {},
        "simulator": {},
    }
    print("choose() per policy: mean / p99 ms")
    for n in (100, 1_000, 10_000):
        calls = args.calls if n < 10_000 else max(args.calls // 4, 100)
        results["choose"][n] = numbers = bench_choose(n, calls)
        target = f" (target {TARGET_MS[n]} ms)" if n in TARGET_MS else ""
        print(f"  {n:>6} nodes{target}")
        for policy, v in numbers.items():
            print(f"    {policy:12s} {v['mean_ms']:.4f} / {v['p99_ms']:.4f}")
    if not args.skip_sim:
        print("simulator (decision_time_ms inside schedule_round): mean / p99 ms")
        for nodes, jobs, policies in ((100, 4000, list(POLICIES)), (10_000, 6000, ["spread", "p2c"])):
            results["simulator"][nodes] = numbers = bench_sim(nodes, jobs, policies)
            print(f"  {nodes:>6} nodes, {jobs} jobs (target {TARGET_MS[nodes]} ms)")
            for policy, v in numbers.items():
                print(
                    f"    {policy:12s} {v['mean_ms']:.4f} / {v['p99_ms']:.4f}  ({v['decisions']} decisions)"
                )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
