"""`fleet top`: nodes with capacity/reserved/used bars and their jobs, and the pending queue.

`view(nodes, jobs)` builds one frame from plain values (the `fleet nodes --json` and
`fleet jobs --json` shapes); the command redraws it with rich Live.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from fleet.cli.render import progress_line, state_text
from fleet.units import format_cpus, format_memory

BAR_WIDTH = 20


def bar(capacity: float, reserved: float, used: float, width: int = BAR_WIDTH) -> Text:
    """`[███▒▒▒      ]`: █ used, ▒ reserved but unused, space free (of capacity)."""
    if capacity <= 0:
        return Text("[" + " " * width + "]")
    used_cells = min(width, round(width * min(used, capacity) / capacity))
    reserved_cells = min(width, round(width * min(reserved, capacity) / capacity))
    rest = max(0, reserved_cells - used_cells)
    text = Text("[")
    text.append("█" * used_cells, style="green")
    text.append("▒" * rest, style="yellow")
    text.append(" " * (width - used_cells - rest))
    text.append("]")
    return text


def view(nodes: Sequence[Mapping[str, Any]], jobs: Sequence[Mapping[str, Any]],
         now: float | None = None, warning: str | None = None) -> Group:
    """One frame of `fleet top` (`warning`, when given, heads it: no master leads)."""
    now = time.time() if now is None else now
    by_id = {j["id"]: j for j in jobs}
    node_table = Table(title=f"nodes ({len(nodes)} live)  █ used ▒ reserved", title_justify="left")
    for column in ("node", "cpus", "", "memory", "", "jobs"):
        node_table.add_column(column)
    for n in nodes:
        cap, res, use = n["capacity"], n["reserved"], n["usage"]
        running = []
        reported = [j["job"] for j in n.get("jobs") or []]
        # a job the store has placed here shows before the node's next report names it
        placed = [j["id"] for j in jobs
                  if j.get("node") == n["node"] and j["state"] in ("PLACED", "RUNNING")]
        steps = {j["job"]: j.get("step") for j in n.get("jobs") or []}
        for job_id in dict.fromkeys([*reported, *placed]):
            job = by_id.get(job_id)
            line = progress_line(job) if job else f"step {steps.get(job_id)}"
            running.append(f"{job_id} {line}".strip())
        name = n["node"] + (" (draining)" if n.get("draining") else "")
        node_table.add_row(
            name,
            bar(cap["cpus"], res["cpus"], use["cpus"]),
            f"{use['cpus']:.2f}/{format_cpus(res['cpus'])}/{format_cpus(cap['cpus'])}",
            bar(cap["memory"], res["memory"], use["memory"]),
            f"{format_memory(use['memory'])}/{format_memory(res['memory'])}/"
            f"{format_memory(cap['memory'])}",
            "\n".join(running) or "-",
        )
    waiting = [j for j in jobs if j["state"] == "PENDING"]
    waiting.sort(key=lambda j: (-(j.get("priority") or 0), j.get("submitted_at") or 0))
    pending = Table(title=f"pending ({len(waiting)})", title_justify="left")
    for column in ("job", "priority", "waited", "reason"):
        pending.add_column(column)
    for j in waiting:
        waited = now - (j.get("submitted_at") or now)
        pending.add_row(j["id"], str(j.get("priority") or 0), f"{waited:.0f}s",
                        j.get("waiting") or "not yet considered")
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    summary = "  ".join(f"{state_text(s)} {c}" for s, c in sorted(counts.items())) or "no jobs"
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    head = Text.from_markup(f"fleet top  {stamp}  jobs: {summary}")
    if warning:
        return Group(Text(f"warning: {warning}", style="yellow"), head, node_table, pending)
    return Group(head, node_table, pending)
