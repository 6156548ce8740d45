"""Commands about jobs: submit, status, jobs, cancel, explain."""

from __future__ import annotations

from pathlib import Path

import typer

from fleet.cli.context import client, console, print_json, warn_if_no_master


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("status")(status)
    app.command("jobs")(jobs)
    app.command("cancel")(cancel)
    app.command("explain")(explain)


def submit(
    file: Path = typer.Argument(..., help="job spec (YAML or JSON)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: key=value (dotted keys)"),
    code: Path | None = typer.Option(
        None, "--code", help="your code folder, sent as the job's code bundle (over `code:`)"),
    wait: bool = typer.Option(False, "--wait", help="show progress until the job ends"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Submit a job; prints its id. With --wait, exit code 0 only when it SUCCEEDED."""
    from fleet.cli.render import JobProgress, state_text, why_line

    c = client()
    job_id = c.submit(file, overrides=set_, code=code)
    if not wait:
        if json_out:
            print_json({"id": job_id, "state": "PENDING"})
        else:
            console.print(job_id, highlight=False)
        return
    if not json_out:
        console.print(f"submitted {job_id}", highlight=False)
        final = JobProgress(c).follow([job_id])[job_id]
        console.print(f"{job_id}: {state_text(final['state'])} on {final.get('node') or '-'}; "
                      f"{why_line(final.get('placement'))}", highlight=False)
        if final.get("error"):
            console.print(f"reason: {final['reason']}: {final['error']}", highlight=False)
    else:
        final = c.wait(job_id)
        print_json(final)
    raise typer.Exit(0 if final["state"] == "SUCCEEDED" else 1)


def status(job: str, json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """A job's state, node, attempts, metrics and placement record."""
    from fleet.cli.render import progress_line, state_text, why_line

    c = client()
    s = c.status(job)
    master = warn_if_no_master(c)
    if json_out:
        print_json({**s, "master": master})
        return
    console.print(f"{s['id']}: {state_text(s['state'])}  attempt {s['attempt']}  "
                  f"node {s.get('node') or '-'}", highlight=False)
    if s.get("phase"):
        console.print(f"  phase: {s['phase']} (its env is being built: `fleet logs {job}`)",
                      highlight=False)
    if s.get("progress"):
        console.print(f"  progress: {progress_line(s)}", highlight=False)
    if s.get("waiting") and not s["terminal"]:
        console.print(f"  waiting: {s['waiting']}", highlight=False)
    if s.get("placement"):
        console.print(f"  placement: {why_line(s['placement'])}", highlight=False)
    if s.get("result"):
        console.print(f"  result: {s['result']}", highlight=False)
    if s.get("error"):
        console.print(f"  {s.get('reason')}: {s['error']}", highlight=False)
    for a in s.get("attempts", []):
        console.print(f"  attempt {a.get('attempt')}: node {a.get('node')} "
                      f"end {a.get('end_reason') or '-'} resumed_from_step "
                      f"{a.get('resumed_from_step')}", highlight=False)
        for field in ("checkpoint_upload", "checkpoint_restore"):  # the store's trouble
            if a.get(field):
                console.print(f"    {field}: {a[field]}", highlight=False)


def jobs(
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
    limit: int = typer.Option(200, "--limit", min=1),
) -> None:
    """Recent jobs, newest first."""
    from fleet.cli.render import jobs_table

    c = client()
    rows = c.jobs(limit)
    warn_if_no_master(c)
    if json_out:
        print_json(rows)
    else:
        console.print(jobs_table(rows))


def cancel(job: str) -> None:
    """Cancel a job: a pending one at once, a running one within seconds."""
    console.print(f"{job}: {client().cancel(job)}", highlight=False)


def explain(job: str, json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Why a job went where it went (candidates, scores), or why it waits."""
    from fleet.cli.render import why_line

    c = client()
    s = c.status(job)
    master = warn_if_no_master(c)
    data = {"id": s["id"], "state": s["state"], "node": s.get("node"),
            "waiting": s.get("waiting") if not s["terminal"] else None,
            "placement": s.get("placement"), "master": master}
    if json_out:
        print_json(data)
        return
    if s["state"] == "PENDING":
        console.print(f"{job} waits: {s.get('waiting') or 'not yet considered'}", highlight=False,
                      soft_wrap=True)
        return
    console.print(f"{job}: {why_line(s.get('placement'))}", highlight=False)
    for c in (s.get("placement") or {}).get("candidates", []):
        mark = "*" if c.get("node") == s.get("node") else " "
        score = "-" if c.get("score") is None else f"{c['score']:.4f}"
        console.print(f" {mark} {c['node']:<12} feasible={c.get('feasible')} score={score} "
                      f"{c.get('why_not') or ''}", highlight=False)
