"""`fleet nodes`: what each node has, holds and uses."""

from __future__ import annotations

import typer

from fleet.cli.context import client, console, print_json


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes)


def nodes(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Live nodes: capacity, reserved, measured usage, jobs, last heartbeat."""
    from fleet.cli.render import nodes_table

    rows = client().nodes()
    if json_out:
        print_json(rows)
    else:
        console.print(nodes_table(rows))
