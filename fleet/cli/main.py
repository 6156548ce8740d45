"""`fleet`: the command line. Errors meant for users print one line and exit non-zero."""

from __future__ import annotations

import sys

import typer

from fleet.cli import artifact_cmds, fleet_cmds, job_cmds, node_cmds, observe_cmds

app = typer.Typer(
    name="fleet",
    help="Train models on a fleet of resource-limited nodes, placed by measured load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
fleet_cmds.register(app)
job_cmds.register(app)
node_cmds.register(app)
observe_cmds.register(app)
artifact_cmds.register(app)


@app.command("sim")
def sim_command(
    trace: str = typer.Argument(..., help="trace JSON file"),
    policy: list[str] = typer.Option(["spread"], "--policy", "-p", help="policies to compare"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
    seed: int = typer.Option(0, help="seed of randomized policies"),
    report_delay: float = typer.Option(
        1.0, "--report-delay", min=0.0,
        help="seconds before placement sees a change in measured usage (the heartbeat)"),
) -> None:
    """Replay a trace through the placement code in simulated time; compare policies."""
    from pathlib import Path

    from fleet.cli.sim_cmd import sim

    sim(Path(trace), policy=policy, json_out=json_out, seed=seed, report_delay=report_delay)


def main() -> None:
    """Usage errors are click's (usage line, exit 2); a FleetError or a Redis failure is one line
    on stderr and a non-zero exit; anything else is a bug and keeps its traceback."""
    from fleet.cli.context import err_console
    from fleet.errors import ConnectionFailed, FleetError

    def fail(message: str, code: int) -> None:
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(code)

    try:
        app()
    except FleetError as exc:
        fail(str(exc), exc.exit_code)
    except Exception as exc:  # a driver's or the master's own Redis connection failing
        from fleet.client import escaped_store_error  # here: `fleet --help` stays fast

        message = escaped_store_error(exc)
        if message is None:
            raise
        fail(message, ConnectionFailed.exit_code)
