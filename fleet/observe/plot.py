"""Curves of a job's metrics across its attempts, and of node load over time (PNG files).

The data is gathered by pure functions (`job_series`, `node_series`) from what fleet records:
every `ctx.report` of every attempt, the attempt records (where a resumed attempt started), and
the nodes' load samples. Drawing is matplotlib with the Agg backend, imported only here and only
when a plot is drawn, so `fleet` starts fast and needs no display. Each draw function returns
what it drew, read back from the axes, so a test can hold the picture to the records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFERRED = ("loss", "accuracy", "val_loss", "val_accuracy")  # drawn first, in this order


@dataclass
class Curve:
    """One metric of one attempt: x = step, y = value."""

    metric: str
    attempt: int
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class Boundary:
    """Where attempt `attempt` took over: at the step it resumed from (a checkpoint), or at
    the step before its first report when it started from zero."""

    attempt: int
    step: float
    resumed_from_step: int | None


@dataclass
class JobSeries:
    job: str
    metrics: list[str]
    curves: list[Curve]
    boundaries: list[Boundary]


def job_series(
    job_id: str, reports: Sequence[Mapping[str, Any]], attempts: Sequence[Mapping[str, Any]] = ()
) -> JobSeries:
    """Curves per (metric, attempt) from the job's progress reports, plus attempt boundaries."""
    curves: dict[tuple[str, int], Curve] = {}
    first_step: dict[int, int] = {}
    for report in reports:
        if report.get("type", "progress") != "progress" or report.get("step") is None:
            continue
        attempt, step = int(report.get("attempt") or 1), int(report["step"])
        first_step.setdefault(attempt, step)
        for name, value in (report.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            curve = curves.setdefault((name, attempt), Curve(name, attempt))
            curve.steps.append(step)
            curve.values.append(float(value))
    names = {name for name, _ in curves}
    metrics = [m for m in PREFERRED if m in names] + sorted(names - set(PREFERRED))
    resumed = {int(a["attempt"]): a.get("resumed_from_step") for a in attempts if a.get("attempt")}
    boundaries = []
    for attempt in sorted(first_step)[1:]:
        from_step = resumed.get(attempt)
        at = float(from_step) if from_step is not None else float(first_step[attempt] - 1)
        boundaries.append(Boundary(attempt, at, from_step))
    ordered = sorted(curves.values(), key=lambda c: (metrics.index(c.metric), c.attempt))
    return JobSeries(job_id, metrics, ordered, boundaries)


@dataclass
class NodeSeries:
    node: str
    times: list[float]  # seconds since the first sample of any node
    cpus_used: list[float]
    cpus_reserved: list[float]
    memory_used: list[float]  # bytes
    memory_reserved: list[float]


def node_series(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[NodeSeries]:
    """Per node, its load samples (`registry.history`) on one shared time axis."""
    starts = [s["time"] for samples in histories.values() for s in samples if "time" in s]
    t0 = min(starts) if starts else 0.0
    out = []
    for node in sorted(histories):
        samples = [s for s in histories[node] if "time" in s]
        out.append(NodeSeries(
            node=node,
            times=[s["time"] - t0 for s in samples],
            cpus_used=[float((s.get("usage") or {}).get("cpus", 0.0)) for s in samples],
            cpus_reserved=[float((s.get("reserved") or {}).get("cpus", 0.0)) for s in samples],
            memory_used=[float((s.get("usage") or {}).get("memory", 0.0)) for s in samples],
            memory_reserved=[float((s.get("reserved") or {}).get("memory", 0.0)) for s in samples],
        ))
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in workers and CI
    import matplotlib.pyplot as plt

    return plt


def draw_job(series: JobSeries, path: Path) -> dict[str, Any]:
    """One panel per metric, a line per attempt, a dashed vertical line where an attempt took
    over. Returns {"panels": {metric: [{"attempt", "x", "y"}]}, "boundaries": [x, ...]} as drawn."""
    if not series.curves:
        from fleet.errors import FleetError

        raise FleetError(f"job {series.job} has no metrics to plot yet")
    plt = _pyplot()
    n = len(series.metrics)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n + 0.6), sharex=True, squeeze=False)
    drawn: dict[str, Any] = {"panels": {}, "boundaries": []}
    try:
        for ax, metric in zip(axes[:, 0], series.metrics, strict=True):
            for curve in (c for c in series.curves if c.metric == metric):
                ax.plot(curve.steps, curve.values, marker="o", markersize=3,
                        label=f"attempt {curve.attempt}", gid=f"attempt-{curve.attempt}")
            for b in series.boundaries:
                label = (f"attempt {b.attempt} resumed from step {b.resumed_from_step}"
                         if b.resumed_from_step is not None else f"attempt {b.attempt} restarted")
                ax.axvline(b.step, color="grey", linestyle="--", linewidth=1, label=label,
                           gid="boundary")
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small", loc="best")
            drawn["panels"][metric] = [
                {"attempt": int(str(line.get_gid()).split("-")[1]),
                 "x": [float(v) for v in line.get_xdata()],
                 "y": [float(v) for v in line.get_ydata()]}
                for line in ax.get_lines() if str(line.get_gid()).startswith("attempt-")
            ]
            drawn["boundaries"] = [float(line.get_xdata()[0]) for line in ax.get_lines()
                                   if line.get_gid() == "boundary"]
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(series.job)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return drawn


def draw_fleet(nodes: Sequence[NodeSeries], path: Path) -> dict[str, Any]:
    """Two panels over time: CPUs used (solid) and reserved (dashed), memory likewise, per node.
    Returns {"cpus": {node: {"used", "reserved"}}, "memory": {...}} as drawn (y values)."""
    if not any(n.times for n in nodes):
        from fleet.errors import FleetError

        raise FleetError("no node load samples yet: start nodes (`fleet up`) and try again")
    plt = _pyplot()
    fig, (ax_cpu, ax_mem) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    drawn: dict[str, Any] = {"cpus": {}, "memory": {}}
    try:
        for n in nodes:
            (used,) = ax_cpu.plot(n.times, n.cpus_used, label=f"{n.node} used")
            ax_cpu.plot(n.times, n.cpus_reserved, linestyle="--", color=used.get_color(),
                        label=f"{n.node} reserved")
            gib = 2.0**30
            ax_mem.plot(n.times, [m / gib for m in n.memory_used], color=used.get_color(),
                        label=f"{n.node} used")
            ax_mem.plot(n.times, [m / gib for m in n.memory_reserved], linestyle="--",
                        color=used.get_color(), label=f"{n.node} reserved")
            drawn["cpus"][n.node] = {"used": list(n.cpus_used), "reserved": list(n.cpus_reserved)}
            drawn["memory"][n.node] = {"used": list(n.memory_used),
                                       "reserved": list(n.memory_reserved)}
        ax_cpu.set_ylabel("CPUs")
        ax_mem.set_ylabel("memory (GiB)")
        ax_mem.set_xlabel("seconds")
        for ax in (ax_cpu, ax_mem):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small", loc="upper left")
        fig.suptitle("node load")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return drawn
