"""The long-running services a command runs in its own process: the master, the metrics exporter.

The CLI starts them through here and reads the fleet through `fleet.client.Client` only, so that
it imports nothing of the store, the master or Redis (tests/unit/test_cli_imports.py). Each
service opens its own checked connection (`fleet.client.connect`: a wrong password or a dead
server is a one-line error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.settings import Settings
from fleet.statefile import redis_url

if TYPE_CHECKING:
    from fleet.master.loop import Master


def build_master(settings: Settings) -> Master:
    """A master on the fleet `settings` name, ready to `run(stop)`: it leads, or stands by while
    another master holds the lease. Built before the caller installs its signal handlers."""
    from fleet.broker import make_app
    from fleet.client import connect
    from fleet.master.loop import Master

    url = redis_url(settings)
    return Master(settings, connect(url), make_app(settings, url))


def serve_metrics(settings: Settings, port: int, address: str) -> tuple[Any, Any]:
    """Serve the fleet's Prometheus metrics at http://ADDRESS:PORT/metrics from a thread;
    (server, thread). OSError when the address cannot be bound."""
    from fleet.client import connect
    from fleet.observe.metrics import serve

    return serve(connect(redis_url(settings)), port, address)
