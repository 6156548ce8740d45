"""Commands that observe the fleet: logs, plot, top, events, monitor (Flower), exporter."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fleet.cli.context import client, console, print_json, settings, wait_for_stop
from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.client import Client


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
    app.command("plot")(plot)
    app.command("top")(top)
    app.command("events")(events)
    app.command("monitor")(monitor)
    app.command("exporter")(exporter)


def logs(
    job: str = typer.Argument(..., help="job id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="follow a running job to its end"),
    attempt: int = typer.Option(None, "--attempt", "-a", min=1, help="one attempt only"),
) -> None:
    """A job's output (stdout and stderr), per attempt; -f follows it until the job ends."""
    from fleet.errors import NotFound

    c = client()
    current = c.log_attempt(job)
    if attempt is not None and attempt > max(current, 1):
        raise NotFound(f"job {job} has no attempt {attempt} (it is at attempt {current})")
    several = attempt is None and current > 1
    out = sys.stdout
    if follow:
        shown = None
        for line in c.follow_logs(job, attempt):
            if several and line.attempt != shown:
                out.write(f"--- attempt {line.attempt} ---\n")
                shown = line.attempt
            out.write(line.text + "\n")
            out.flush()
        return
    for n in [attempt] if attempt is not None else range(1, current + 1):
        if several:
            out.write(f"--- attempt {n} ---\n")
        for text in c.log_lines(job, n):
            out.write(text + "\n")


def plot(
    job: str = typer.Argument(None, help="job id (omit with --fleet)"),
    fleet_: bool = typer.Option(False, "--fleet", help="node load over time instead of a job"),
    output: Path = typer.Option(None, "--output", "-o", help="PNG file (default: <job>.png)"),
) -> None:
    """Draw a job's loss/accuracy curves across attempts (resumes marked), or node load."""
    from fleet.observe import plot as plots

    c = client()
    if fleet_:
        if job is not None:
            raise FleetError("give a job id or --fleet, not both")
        path = output or Path("fleet.png")
        plots.draw_fleet(plots.node_series(c.node_histories()), path)
    else:
        if job is None:
            raise FleetError("name a job to plot (`fleet plot JOB`), or use --fleet")
        status = c.status(job)  # NotFound for an unknown job
        path = output or Path(f"{job}.png")
        series = plots.job_series(job, c.metrics(job), status.get("attempts") or [])
        plots.draw_job(series, path)
    console.print(f"wrote {path}", highlight=False)


def top(
    once: bool = typer.Option(False, "--once", help="print one frame and exit"),
    interval: float = typer.Option(1.0, "--interval", "-i", min=0.1, help="seconds per refresh"),
) -> None:
    """Live view: nodes with capacity/reserved/used bars and running jobs, the pending queue."""
    from rich.console import Group
    from rich.live import Live

    from fleet.cli.context import warn_if_no_master
    from fleet.cli.top import view

    c = client()
    if once:
        from rich.console import Console

        # off a terminal (a pipe, a log), lines are not cut to 80 columns: ids stay whole
        out = console if console.is_terminal else Console(width=200)
        out.print(view(c.nodes(), c.active_jobs()))
        warn_if_no_master(c)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def frame() -> Group:
        return view(c.nodes(), c.active_jobs(), warning=_no_master(c))

    with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
        while not stop.wait(interval):
            live.update(frame(), refresh=True)


def _no_master(c: Client) -> str | None:
    """The no-master warning for a frame of `fleet top` (drawn in it: stderr would tear the
    live display); None too when the master's keys cannot be read (the frame still draws)."""
    from fleet.cli.context import no_master_line

    try:
        return no_master_line(c.master_status())
    except FleetError:
        return None


def events(
    job: str = typer.Argument(None, help="only this job's events"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object per line"),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="only the last N past events"),
) -> None:
    """Lifecycle events, one line each: submitted, placed, started, resumed, retrying, finished."""
    import json

    from fleet.observe.events import event_line

    for event in client().events(job, limit=limit, follow=follow):
        text = json.dumps(event, sort_keys=True) if json_out else event_line(event)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def monitor(
    open_: bool = typer.Option(False, "--open", help="open Flower in a web browser"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Flower's URL (tasks under the job's name, their node and progress) and how to log in."""
    from fleet.statefile import read_state

    state = read_state(settings()) or {}
    url = state.get("flower_url")
    if not url:
        raise FleetError("no Flower recorded for this fleet: start one with `fleet up` "
                         "(Flower is on unless --no-flower), or open your deployment's Flower")
    info = {"flower_url": url, "flower_user": state.get("flower_user"),
            "flower_password_file": state.get("flower_password_file"),
            "exporter_url": state.get("exporter_url")}
    if json_out:
        print_json(info)
    else:
        console.print(f"Flower: {url}", highlight=False)
        console.print(f"  log in as {info['flower_user']}, password in "
                      f"{info['flower_password_file']}", highlight=False)
        if info["exporter_url"]:
            console.print(f"Prometheus metrics: {info['exporter_url']}", highlight=False)
    if open_:
        import webbrowser

        webbrowser.open(url)


def exporter(
    port: int = typer.Option(9808, "--port", "-p", min=0, max=65535, help="HTTP port"),
    address: str = typer.Option("127.0.0.1", "--address", help="address to bind"),
) -> None:
    """Serve the fleet's Prometheus metrics at http://ADDRESS:PORT/metrics until stopped."""
    from fleet.services import serve_metrics

    try:
        server, _thread = serve_metrics(settings(), port, address)
    except OSError as exc:
        raise FleetError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from None
    bound = server.server_address[1]
    console.print(f"serving fleet metrics at http://{address}:{bound}/metrics", highlight=False)
    try:
        wait_for_stop()
    finally:
        server.shutdown()
