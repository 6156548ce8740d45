"""`fleet`: the command line. Errors meant for users print one line and exit non-zero."""

from __future__ import annotations

import sys

import typer

from fleet.cli import fleet_cmds, job_cmds, node_cmds

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


@app.command("sim")
def sim_command(
    trace: str = typer.Argument(..., help="trace JSON file"),
    policy: list[str] = typer.Option(["spread"], "--policy", "-p", help="policies to compare"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
    seed: int = typer.Option(0, help="seed of randomized policies"),
) -> None:
    """Replay a trace through the placement code in simulated time; compare policies."""
    from pathlib import Path

    from fleet.cli.sim_cmd import sim

    sim(Path(trace), policy=policy, json_out=json_out, seed=seed)


def main() -> None:
    from fleet.cli.context import err_console
    from fleet.errors import FleetError

    try:
        app(standalone_mode=False)
    except FleetError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # redis outages and friends: one line, no traceback
        import click
        import redis

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, redis.exceptions.RedisError):
            err_console.print(f"[red]error:[/red] redis: {exc}", highlight=False, soft_wrap=True)
            sys.exit(3)
        raise
