"""`fleet artifacts JOB [-o DIR] [--attempt N] [--list]`: what a job wrote to `ctx.output_dir`,
downloaded (or listed) from the fleet's store."""

from __future__ import annotations

from pathlib import Path

import typer

from fleet.cli.context import client, console, err_console
from fleet.units import format_memory


def register(app: typer.Typer) -> None:
    app.command("artifacts")(artifacts)


def artifacts(
    job: str = typer.Argument(..., help="job id"),
    output: Path = typer.Option(
        None, "--output", "-o", help="a new or empty folder to download into (default: ./JOB)"),
    attempt: int = typer.Option(
        None, "--attempt", "-a", min=1, help="this attempt's output (default: the one that "
        "succeeded, else the latest)"),
    listing: bool = typer.Option(
        False, "--list", "-l", help="list the files (name, size) without downloading them"),
) -> None:
    """Download the files a job wrote under ctx.output_dir (its succeeded attempt's)."""
    if listing:
        choice, found = client().artifact_list(job, attempt)
        _notes(choice.note, found.skipped)
        for f in found.files:
            console.print(f"{format_memory(f.size):>8}  {f.name}", highlight=False,
                          soft_wrap=True, markup=False)
        return
    done = client().artifacts(job, output, attempt=attempt)
    _notes(done.note, done.skipped)
    files = f"{len(done.paths)} file{'' if len(done.paths) == 1 else 's'}"
    console.print(f"{done.dest}: {files} ({format_memory(done.size)}) of {done.job_id}, "
                  f"attempt {done.attempt}", highlight=False, soft_wrap=True)


def _notes(note: str | None, skipped: list[str]) -> None:
    if note:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if skipped:
        err_console.print(f"[yellow]note:[/yellow] not copied (links and special files are "
                          f"never followed): {', '.join(skipped)}", highlight=False,
                          soft_wrap=True)
