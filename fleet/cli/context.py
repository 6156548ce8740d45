"""What every command shares: the settings (read once, at the edge) and a client.

Commands read the fleet through `fleet.client.Client` only, and get it from `client()`: one
factory, `client_factory`, that a test replaces with a Client over the in-memory store (see
tests/unit/test_cli.py), so that a command runs without Redis.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fleet.errors import FleetError
from fleet.settings import Settings

if TYPE_CHECKING:  # imported when called: `fleet --help` stays fast
    from fleet.client import Client

console = Console()
err_console = Console(stderr=True)


@cache
def settings() -> Settings:
    return Settings()


def connect_client() -> Client:
    """A Client of the fleet the settings name (its Redis): what commands use outside tests.
    On the machine that ran `fleet up`, it reads the store with the keys the state file names
    (`fleet logs`, `fleet artifacts` need no FLEET_S3_* variable there)."""
    from fleet.client import Client
    from fleet.statefile import with_recorded_storage

    return Client(with_recorded_storage(settings()))


client_factory: Callable[[], Client] = connect_client


def client() -> Client:
    """The Client a command reads and writes the fleet through, from `client_factory` (looked
    up at each call, so that a test's replacement reaches every command)."""
    return client_factory()


def no_master_line(status: dict[str, Any]) -> str | None:
    """The warning for a fleet no master leads (from `Client.master_status`), else None."""
    if status.get("up") is not False:
        return None
    start = "(start one: `fleet master`, or `fleet up`)"
    if status.get("down_for") is None:
        return f"no master holds the lease {start}"
    return f"no master has held the lease for {status['down_for']:.0f} s {start}"


def warn_if_no_master(c: Client) -> dict[str, Any]:
    """Say on stderr when no master leads (placement has stopped); the master status, for
    `--json` outputs that carry it. A read command must not fail for it: any error reading
    the master's keys (the Client raises only FleetError) leaves the warning out."""
    try:
        status = c.master_status()
    except FleetError:
        return {"up": None, "leader": None, "down_for": None, "last_seen": None}
    line = no_master_line(status)
    if line is not None:
        err_console.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    return status


def print_json(data: Any) -> None:
    """`--json` output: stable shapes documented in docs/json.md, one document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


def wait_for_stop() -> None:
    """Block until SIGTERM or Ctrl-C: the foreground commands (`up`, `exporter`) stop cleanly."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
