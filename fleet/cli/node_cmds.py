"""`fleet nodes`: what each node has, holds and uses."""

from __future__ import annotations

import typer

from fleet.cli.context import client, console, print_json, warn_if_no_master


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes)


def nodes(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Live nodes: capacity, reserved, measured usage, jobs, last heartbeat."""
    from fleet.cli.render import nodes_table

    c = client()
    rows = c.nodes()
    warn_if_no_master(c)
    if json_out:
        print_json(rows)
    else:
        console.print(nodes_table(rows))
