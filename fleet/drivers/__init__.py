"""Drivers: how nodes come and go. `local` (processes on this machine, the default), `docker`."""

from __future__ import annotations

from fleet.drivers.base import Driver
from fleet.settings import Settings


def get_driver(name: str, settings: Settings) -> Driver:
    if name == "local":
        from fleet.drivers.local import LocalDriver

        return LocalDriver(settings)
    from fleet.errors import SpecError

    raise SpecError("--driver", f"unknown driver {name!r}; choose local")
