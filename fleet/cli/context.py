"""What every command shares: the settings (read once, at the edge) and a client."""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any

from rich.console import Console

from fleet.settings import Settings

console = Console()
err_console = Console(stderr=True)


@cache
def settings() -> Settings:
    return Settings()


def client():  # -> fleet.client.Client, imported lazily to keep `fleet --help` fast
    from fleet.client import Client

    return Client(settings())


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
