"""How jobs, nodes and placements look in a terminal (rich). JSON output does not come here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet.units import format_cpus, format_memory

if TYPE_CHECKING:
    from fleet.client import Client

STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
               "PLACED": "cyan", "PENDING": "magenta"}


def state_text(state: str | None) -> str:
    style = STATE_STYLE.get(state or "", "white")
    return f"[{style}]{state}[/{style}]"


def progress_line(status: Mapping[str, Any]) -> str:
    """`epoch 3/12 loss 0.412 accuracy 0.931 on node-1`."""
    parts = ["preparing env"] if status.get("phase") == "PREPARING" else []
    progress = status.get("progress") or {}
    epochs = (status.get("params") or {}).get("epochs")
    if progress.get("step") is not None:
        parts.append(f"epoch {progress['step']}" + (f"/{epochs}" if epochs else ""))
    for name, value in (progress.get("metrics") or {}).items():
        parts.append(f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}")
    if status.get("node"):
        parts.append(f"on {status['node']}")
    if status.get("state") == "PENDING" and status.get("waiting"):
        parts.append(f"waiting: {status['waiting']}")
    return " ".join(parts)


def why_line(placement: Mapping[str, Any] | None) -> str:
    """Where a job went and why, from its placement record."""
    if not placement or not placement.get("node"):
        return "not placed"
    cands = [c for c in placement.get("candidates", []) if c.get("score") is not None]
    cands.sort(key=lambda c: -(c["score"]))
    scores = ", ".join(f"{c['node']} {c['score']:.3f}" for c in cands[:4])
    infeasible = [c["node"] for c in placement.get("candidates", []) if not c.get("feasible")]
    text = f"{placement.get('policy')} chose {placement['node']} (scores: {scores})"
    if infeasible:
        text += f"; did not fit: {', '.join(infeasible)}"
    return text


class JobProgress:
    """One progress bar per job (epoch, loss, accuracy), until every job is terminal."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.progress = Progress(
            TextColumn("[bold]{task.fields[name]}"), BarColumn(bar_width=12),
            TextColumn("{task.fields[state]} {task.fields[line]}"), TimeElapsedColumn(),
        )
        self.tasks: dict[str, TaskID] = {}

    def follow(self, job_ids: Sequence[str], interval: float = 0.5) -> dict[str, dict[str, Any]]:
        """Bars on a terminal; elsewhere (CI, a pipe) one line per change of state or epoch."""
        if not self.progress.console.is_terminal:
            return self._follow_lines(job_ids, interval)
        final: dict[str, dict[str, Any]] = {}
        with self.progress:
            for job_id in job_ids:
                self.tasks[job_id] = self.progress.add_task(
                    job_id, total=None, name=job_id, state="", line=""
                )
            while len(final) < len(job_ids):
                for job_id in job_ids:
                    if job_id in final:
                        continue
                    status = self.client.status(job_id)
                    self._update(job_id, status)
                    if status["terminal"]:
                        final[job_id] = status
                time.sleep(interval)
        return final

    def _follow_lines(self, job_ids: Sequence[str], interval: float) -> dict[str, dict[str, Any]]:
        final: dict[str, dict[str, Any]] = {}
        states: dict[str, str] = {}
        reports: dict[str, int] = {}
        say = self.progress.console.print
        while len(final) < len(job_ids):
            for job_id in job_ids:
                if job_id in final:
                    continue
                status = self.client.status(job_id)
                for report in self.client.metrics(job_id, reports.get(job_id, 0)):
                    reports[job_id] = reports.get(job_id, 0) + 1
                    say(f"{job_id} {progress_line({**status, 'progress': report})}",
                        highlight=False, soft_wrap=True)
                if states.get(job_id) != status["state"]:
                    states[job_id] = status["state"]
                    say(f"{job_id} {status['state']} {progress_line(status)}", highlight=False,
                        soft_wrap=True)
                if status["terminal"]:
                    final[job_id] = status
            time.sleep(interval)
        return final

    def _update(self, job_id: str, status: Mapping[str, Any]) -> None:
        epochs = (status.get("params") or {}).get("epochs")
        step = (status.get("progress") or {}).get("step")
        kwargs: dict[str, Any] = {"state": state_text(status["state"]),
                                  "line": progress_line(status)}
        if epochs:
            kwargs["total"] = epochs
            kwargs["completed"] = epochs if status["state"] == "SUCCEEDED" else (step or 0)
        self.progress.update(self.tasks[job_id], **kwargs)


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    table = Table("job", "state", "node", "attempt", "progress / reason")
    for j in jobs:
        detail = progress_line(j) if not j["terminal"] else (j.get("error") or _result(j))
        table.add_row(j["id"], state_text(j["state"]), j.get("node") or "-", str(j["attempt"]),
                      detail)
    return table


def _result(job: Mapping[str, Any]) -> str:
    result = job.get("result") or {}
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items())


def nodes_table(nodes: Sequence[Mapping[str, Any]]) -> Table:
    table = Table("node", "cpus cap/res/used", "memory cap/res/used", "gpus", "jobs", "heartbeat",
                  "container")
    now = time.time()
    for n in nodes:
        cap, res, use = n["capacity"], n["reserved"], n["usage"]
        flag = " [yellow](draining)[/yellow]" if n.get("draining") else ""
        if n.get("healthy") is False:
            flag += f" [red](unhealthy: {escape(str(n.get('unhealthy_reason') or '?'))})[/red]"
        table.add_row(
            n["node"] + flag,
            f"{format_cpus(cap['cpus'])} / {format_cpus(res['cpus'])} / {use['cpus']:.2f}",
            f"{format_memory(cap['memory'])} / {format_memory(res['memory'])} / "
            f"{format_memory(use['memory'])}",
            str(cap.get("gpus", 0)),
            ", ".join(j["job"] for j in n.get("jobs", [])) or "-",
            f"{now - n['time']:.1f}s ago",
            (n.get("container") or "-")[:12],
        )
    return table
