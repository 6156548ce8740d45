"""`fleet sim TRACE`: replay a trace through the placement policies and compare them.

Edge only: read the file, one call to `fleet.sim.engine.compare`, render a table (or JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fleet.errors import SpecError
from fleet.placement import POLICIES
from fleet.sim.engine import REPORT_DELAY, compare
from fleet.sim.trace import parse_trace


def load_trace(path: Path) -> Any:
    """The JSON in `path`; SpecError (field `trace`) when it is missing or not JSON."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("trace", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpecError("trace", f"{path} is not valid JSON: {exc}") from None


def _pair(a: float, b: float, fmt: str = ",.0f") -> str:
    return f"{a:{fmt}} / {b:{fmt}}"


def render(rows: list[dict[str, Any]], title: str = "") -> Table:
    """One row per policy: the metrics a reader compares first (seconds unless marked)."""
    table = Table(title=title or None, title_justify="left", caption=_CAPTION, caption_justify="left")
    for name in (
        "policy",
        "JCT mean / p95",
        "wait mean / p95",
        "slow-down",
        "stretch",
        "makespan ÷ bound",
        "util cpu/mem/gpu %",
        "idle / held wait",
        "over-commits",
        "kills / failed",
        "decide ms mean / p99",
    ):
        table.add_column(name, justify="left" if name == "policy" else "right", no_wrap=name == "policy")
    for row in rows:
        util = "/".join(f"{v * 100:.0f}" for v in row["utilization"].values())
        table.add_row(
            row["policy"],
            _pair(row["mean_jct"], row["p95_jct"]),
            _pair(row["mean_wait"], row["p95_wait"]),
            f"{row['mean_slowdown']:.2f}",
            f"{row['mean_stretch']:.3f}",
            f"{row['makespan_ratio']:.3f}",
            util,
            _pair(row["idle_while_waiting"], row["held_while_waiting"]),
            str(row["over_commits"]),
            f"{row['kills']} / {row['failed']}",
            _pair(row["decision_time_ms_mean"], row["decision_time_ms_p99"], ".3f"),
        )
    return table


_CAPTION = (
    "slow-down: JCT / duration; stretch: run time / duration (what sharing CPUs with busier "
    "neighbours cost). idle wait: job-seconds a job waited though it fit some node's free "
    "resources; held wait: the same, where the only such nodes were held for a starving job. "
    "Bound: release-aware lower bound on the makespan."
)


def sim(
    trace: Path = typer.Argument(..., help="trace JSON: nodes and jobs (scripts/make_trace.py)"),
    policy: list[str] = typer.Option(
        ["spread"], "--policy", "-p", help="placement policy; repeat to compare several"
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    seed: int = typer.Option(0, help="seed of the policies' random choices"),
    # Annotated, so that a plain call (`fleet.cli.main` calls this function) gets the float.
    report_delay: Annotated[
        float,
        typer.Option(min=0.0, help="seconds before placement sees a change in measured usage"),
    ] = REPORT_DELAY,
) -> None:
    """Replay TRACE in simulated time through the placement code, once per policy."""
    for name in policy:
        if name not in POLICIES:
            raise SpecError("--policy", f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    parsed = parse_trace(load_trace(trace))
    rows = compare(parsed, policy, seed=seed, report_delay=report_delay)
    if json_out:
        payload = {"trace": str(trace), "seed": seed, "report_delay": report_delay, "results": rows}
        typer.echo(json.dumps(payload, indent=2))
        return
    jobs = len(parsed.jobs)
    floor = rows[0]["mean_duration"] if rows else 0.0
    title = (
        f"{trace.name}: {len(parsed.nodes)} nodes, {jobs} jobs, "
        f"mean duration {floor:,.1f}s (no policy's mean JCT can be lower)"
    )
    Console().print(render(rows, title))
