"""Write a synthetic, seeded trace for `fleet sim`.

    python scripts/make_trace.py --nodes 16 --jobs 1000 --load 0.8 --seed 1 -o trace.json
    python scripts/make_trace.py --nodes 24 --jobs 2000 --gpus -o gpu-trace.json
    python scripts/make_trace.py --shapes 1:2Gi,0.5:1Gi,0.25:1Gi,0.25:512Mi --scale 0.25 \
        --jobs 60 --time-scale 25 -o live.json      # the live benchmark's trace

Nodes come in uneven shapes (2 to 32 CPUs, 2 to 8 GiB per CPU, some with GPUs). Jobs have
heterogeneous demands: CPUs from half a core to 8, memory per CPU drawn from a log-normal (some
jobs are memory-heavy, some CPU-heavy), log-normal durations (median 5 min), 10% at priority 1.
With `--gpus`, a share of the jobs asks for GPUs in Philly's mix (1: 70%, 2: 10%, 4: 15%,
8: 5%). Every job fits some node when it is empty. Arrivals are Poisson, at the rate that makes
the offered load on the busiest resource `--load` × the fleet's capacity of it (offered load
counts requests, what the operator sees).

What a job really uses differs from what it asks for, as in every published cluster trace
(Google 2011 and 2019, Alibaba 2018 and PAI 2020: most tasks use less CPU than they request, a
minority more, and memory below the request). Each job gets `usage` = request × a ratio drawn,
independently per job, from a log-normal: CPUs median 0.7, sigma 0.5, clipped to [0.05, 4]
(about a quarter of the jobs use more CPU than they asked for, 2% more than twice); memory
median 0.8, sigma 0.25, clipped at 1 (a job over its memory request is killed by its node's
watchdog, so none is generated). The ratios come from a random stream of their own, so the rest
of a trace is the same with `--no-usage` (every job uses exactly its request, as before).
docs/placement.md says where these numbers come from. `--cpu-usage` and `--memory-usage`
(`MEDIAN:SIGMA`) change them, for a sensitivity study.

`--shapes` gives the nodes instead (`cpus:memory`, comma-separated), for a fleet much smaller
than the generated ones (the live benchmark's 4 local nodes): `--scale` then shrinks every job's
CPUs and memory by that factor before it is checked against the nodes (the same distributions,
in smaller units), and `--time-scale` divides every time (submit, duration) so that a trace of
minutes-long jobs replays in a few minutes; `--max-duration` clips durations first (seconds,
before scaling) so that one job in the log-normal's tail cannot dominate a short run. A
`--shapes` trace gets no `usage` unless `--usage` is given: the live benchmark's jobs burn
exactly the CPUs they ask for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

GI = 2**30
# (cpus, memory GiB, gpus, GPU memory GiB), weight
CPU_SHAPES = [
    ((2, 4, 0, 0), 2),
    ((4, 8, 0, 0), 3),
    ((4, 32, 0, 0), 1),
    ((8, 16, 0, 0), 2),
    ((8, 32, 0, 0), 2),
    ((16, 32, 0, 0), 2),
    ((16, 64, 0, 0), 1),
    ((32, 128, 0, 0), 1),
]
GPU_SHAPES = [((16, 64, 4, 16), 2), ((32, 128, 8, 32), 1)]
PHILLY_GPUS = ([1, 2, 4, 8], [0.70, 0.10, 0.15, 0.05])
JOB_CPUS = ([0.5, 1, 2, 4, 8], [0.20, 0.35, 0.25, 0.15, 0.05])
# usage / request: (median, sigma) of a log-normal, and the clip (docs/placement.md: sources)
CPU_USAGE = (0.7, 0.5)
MEMORY_USAGE = (0.8, 0.25)
CPU_USAGE_CLIP = (0.05, 4.0)
MEMORY_USAGE_CLIP = (0.05, 1.0)


def _pick(rng: np.random.Generator, shapes: list[Any]) -> tuple[Any, ...]:
    weights = np.array([w for _, w in shapes], dtype=float)
    shape: tuple[Any, ...] = shapes[int(rng.choice(len(shapes), p=weights / weights.sum()))][0]
    return shape


def make_nodes(rng: np.random.Generator, count: int, gpus: bool) -> list[dict[str, Any]]:
    """`count` nodes of uneven shapes; with GPUs, a quarter GPU nodes, one with 8 GPUs."""
    n_gpu = max(1, count // 4) if gpus else 0
    shapes = [_pick(rng, CPU_SHAPES) for _ in range(count - n_gpu)]
    if n_gpu:
        shapes += [GPU_SHAPES[1][0]] + [_pick(rng, GPU_SHAPES) for _ in range(n_gpu - 1)]
    # Never all the same shape: the point is uneven nodes.
    if len({s for s in shapes}) == 1 and count > 1:
        shapes[0] = CPU_SHAPES[0][0]
    nodes = []
    for k, (cpus, mem, n_gpus, gpu_mem) in enumerate(shapes):
        node = {"name": f"node-{k + 1}", "cpus": cpus, "memory": mem * GI, "gpus": n_gpus}
        if n_gpus:
            node["gpu_memory"] = gpu_mem * GI
            node["labels"] = {"accelerator": "gpu"}
        nodes.append(node)
    return nodes


def _fits_some(nodes: list[dict[str, Any]], res: dict[str, Any]) -> bool:
    return any(
        n["cpus"] >= res["cpus"] and n["memory"] >= res["memory"] and n["gpus"] >= res["gpus"] for n in nodes
    )


def make_job(
    rng: np.random.Generator, nodes: list[dict[str, Any]], gpu_job: bool, scale: float = 1.0
) -> dict[str, Any]:
    """One job's resources and duration, drawn until it fits some node.

    `scale` shrinks CPUs and memory (not GPUs) before the fit check: the same mix, smaller units.
    """
    while True:
        if gpu_job:
            gpus = int(rng.choice(PHILLY_GPUS[0], p=PHILLY_GPUS[1]))
            cpus = float(gpus * rng.choice([2, 4]))
            memory = int(gpus * rng.choice([8, 16]) * GI)
        else:
            gpus = 0
            cpus = float(rng.choice(JOB_CPUS[0], p=JOB_CPUS[1]))
            per_cpu = float(np.clip(rng.lognormal(np.log(2.0), 0.8), 0.25, 16))
            memory = int(round(cpus * per_cpu * 4) / 4 * GI) or GI // 4
        if scale != 1.0:
            cpus = cpus * scale
            memory = max(int(memory * scale) // 2**20 * 2**20, 2**20)
        res = {"cpus": cpus, "memory": memory, "gpus": gpus}
        if _fits_some(nodes, res):
            duration = float(np.clip(rng.lognormal(np.log(300), 1.0), 10, 4 * 3600))
            return {"resources": res, "duration": round(duration, 1)}


def draw_usage(
    rng: np.random.Generator,
    jobs: list[dict[str, Any]],
    cpu: tuple[float, float] = CPU_USAGE,
    memory: tuple[float, float] = MEMORY_USAGE,
) -> None:
    """Give each job a `usage` (CPUs, memory really used): its request × log-normal ratios."""
    n = len(jobs)
    cpu_ratio = np.clip(rng.lognormal(np.log(cpu[0]), cpu[1], n), *CPU_USAGE_CLIP)
    mem_ratio = np.clip(rng.lognormal(np.log(memory[0]), memory[1], n), *MEMORY_USAGE_CLIP)
    for job, c, m in zip(jobs, cpu_ratio, mem_ratio, strict=True):
        res = job["resources"]
        job["usage"] = {
            "cpus": round(float(res["cpus"] * c), 3),
            "memory": int(res["memory"] * m) // 2**20 * 2**20,
        }


def gpu_share_for_balance(
    nodes: list[dict[str, Any]], cpu_jobs: list[dict[str, Any]], gpu_jobs: list[dict[str, Any]]
) -> float:
    """The share of GPU jobs that puts the same offered load on the CPUs as on the GPUs."""
    cpus = sum(n["cpus"] for n in nodes)
    gpus = sum(n["gpus"] for n in nodes)

    def mean(jobs: list[dict[str, Any]], r: str) -> float:
        return float(np.mean([j["duration"] * j["resources"][r] for j in jobs]))

    cpu_per_cpu_job = mean(cpu_jobs, "cpus") / cpus
    share = cpu_per_cpu_job / (
        mean(gpu_jobs, "gpus") / gpus - mean(gpu_jobs, "cpus") / cpus + cpu_per_cpu_job
    )
    return float(np.clip(share, 0.05, 0.95))


def parse_shapes(text: str) -> list[dict[str, Any]]:
    """`1:2Gi,0.5:512Mi` -> nodes node-1, node-2 with those CPUs and memory (bytes)."""
    from fleet.units import parse_memory

    nodes = []
    for k, part in enumerate(p for p in text.split(",") if p.strip()):
        cpus, _, memory = part.strip().partition(":")
        nodes.append({"name": f"node-{k + 1}", "cpus": float(cpus),
                      "memory": int(parse_memory(memory)), "gpus": 0})
    if not nodes:
        raise ValueError("expected shapes like 1:2Gi,0.5:512Mi")
    return nodes


def compress(trace: dict[str, Any], time_scale: float) -> dict[str, Any]:
    """The same trace with every time divided by `time_scale` (rounded to milliseconds)."""
    out = dict(trace, jobs=[dict(j) for j in trace["jobs"]])
    for job in out["jobs"]:
        job["submit_at"] = round(job["submit_at"] / time_scale, 3)
        job["duration"] = round(job["duration"] / time_scale, 3)
    out["meta"] = dict(trace.get("meta", {}), time_scale=time_scale)
    return out


def make_trace(
    nodes: int = 16,
    jobs: int = 1000,
    load: float = 0.8,
    gpus: bool = False,
    gpu_share: float | None = None,
    seed: int = 0,
    shapes: list[dict[str, Any]] | None = None,
    scale: float = 1.0,
    max_duration: float | None = None,
    usage: bool | None = None,
    cpu_usage: tuple[float, float] = CPU_USAGE,
    memory_usage: tuple[float, float] = MEMORY_USAGE,
) -> dict[str, Any]:
    """A trace dict (see fleet.sim.trace); the same arguments give the same trace.

    With GPUs and no `gpu_share`, the share of GPU jobs is the one that loads CPUs and GPUs
    alike, so that both are at `load`. `usage` (default: on, off with `shapes`) draws what each
    job really uses (`draw_usage`) from a random stream of its own: with it off, the trace is
    the same but for the `usage` fields.
    """
    if usage is None:
        usage = not shapes
    rng = np.random.default_rng(seed)
    node_list = [dict(n) for n in shapes] if shapes else make_nodes(rng, nodes, gpus)
    gpus = gpus and any(n["gpus"] for n in node_list)
    cpu_jobs = [make_job(rng, node_list, False, scale) for _ in range(jobs)]
    if max_duration is not None:
        for job in cpu_jobs:
            job["duration"] = min(job["duration"], max_duration)
    gpu_jobs = [make_job(rng, node_list, True) for _ in range(jobs)] if gpus else []
    if gpus and gpu_share is None:
        gpu_share = gpu_share_for_balance(node_list, cpu_jobs, gpu_jobs)
    share = gpu_share or 0.0
    job_list = [gpu_jobs[k] if rng.random() < share else cpu_jobs[k] for k in range(jobs)]
    # Offered load per resource = rate × mean(duration × demand) / capacity; the busiest = load.
    capacity = {r: sum(n[r] for n in node_list) for r in ("cpus", "memory", "gpus")}
    work = {r: np.mean([j["duration"] * j["resources"][r] for j in job_list]) for r in capacity}
    rate = load * min(capacity[r] / work[r] for r in capacity if capacity[r] and work[r])
    t = 0.0
    for k, job in enumerate(job_list):
        t += float(rng.exponential(1 / rate))
        job["id"] = f"job-{k + 1:05d}"
        job["submit_at"] = round(t, 3)
        job["priority"] = int(rng.random() < 0.1)
    meta: dict[str, Any] = {
        "nodes": len(node_list), "jobs": jobs, "load": load, "gpus": gpus, "seed": seed
    }
    if shapes:
        meta.update(scale=scale, max_duration=max_duration)
    if gpus:
        meta["gpu_share"] = round(share, 4)
    keys: tuple[str, ...] = ("id", "submit_at", "duration", "resources", "priority")
    if usage:
        draw_usage(np.random.default_rng([seed, 1]), job_list, cpu_usage, memory_usage)
        meta["usage"] = {"cpus": list(cpu_usage), "memory": list(memory_usage)}
        keys += ("usage",)
    return {"meta": meta, "nodes": node_list, "jobs": [{k: j[k] for k in keys} for j in job_list]}


def _median_sigma(text: str) -> tuple[float, float]:
    median, _, sigma = text.partition(":")
    try:
        pair = float(median), float(sigma)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MEDIAN:SIGMA, e.g. 0.7:0.5, got {text!r}") from None
    if not (pair[0] > 0 and pair[1] >= 0):
        raise argparse.ArgumentTypeError("the median must be > 0 and sigma >= 0")
    return pair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=16, help="how many nodes (uneven sizes)")
    parser.add_argument("--jobs", type=int, default=1000, help="how many jobs")
    parser.add_argument("--load", type=float, default=0.8, help="offered load, busiest resource")
    parser.add_argument("--gpus", action="store_true", help="GPU nodes and jobs (Philly mix)")
    parser.add_argument(
        "--gpu-share", type=float, help="share of GPU jobs (default: CPUs and GPUs equally loaded)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", help="nodes as cpus:memory,... instead of generated ones")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink job CPUs and memory")
    parser.add_argument("--max-duration", type=float, help="clip durations (s, before scaling)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="divide every time by this")
    parser.add_argument(
        "--usage", action=argparse.BooleanOptionalAction, default=None,
        help="draw what each job really uses (default: on, off with --shapes)",
    )
    parser.add_argument(
        "--cpu-usage", type=_median_sigma, default=CPU_USAGE, metavar="MEDIAN:SIGMA",
        help="log-normal of CPUs used / requested (default 0.7:0.5)",
    )
    parser.add_argument(
        "--memory-usage", type=_median_sigma, default=MEMORY_USAGE, metavar="MEDIAN:SIGMA",
        help="log-normal of memory used / requested, clipped at 1 (default 0.8:0.25)",
    )
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.jobs < 0 or not 0 < args.load:
        parser.error("--nodes must be >= 1, --jobs >= 0 and --load > 0")
    if not (args.scale > 0 and args.time_scale > 0):
        parser.error("--scale and --time-scale must be > 0")
    try:
        shapes = parse_shapes(args.shapes) if args.shapes else None
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    trace = make_trace(args.nodes, args.jobs, args.load, args.gpus, args.gpu_share, args.seed,
                       shapes, args.scale, args.max_duration, args.usage, args.cpu_usage,
                       args.memory_usage)
    if args.time_scale != 1.0:
        trace = compress(trace, args.time_scale)
    text = json.dumps(trace, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
