"""Drivers: how nodes come and go. `local` (processes on this machine, the default), `docker`
(containers with real limits, through the Docker SDK), `swarm` (the compose.yaml stack on a
Docker Swarm: more than one machine)."""

from __future__ import annotations

from fleet.drivers.base import Driver
from fleet.settings import Settings
from fleet.statefile import read_state

DRIVERS = ("local", "docker", "swarm")


def get_driver(name: str, settings: Settings) -> Driver:
    if name == "local":
        from fleet.drivers.local import LocalDriver

        return LocalDriver(settings)
    if name == "docker":
        from fleet.drivers.docker import DockerDriver

        return DockerDriver(settings)
    if name == "swarm":
        from fleet.drivers.swarm import SwarmDriver

        return SwarmDriver(settings)
    from fleet.errors import SpecError

    raise SpecError("--driver", f"unknown driver {name!r}; choose one of {', '.join(DRIVERS)}")


def driver_for_state(settings: Settings, name: str | None = None) -> Driver:
    """The driver named, else the one that started the fleet recorded in the state file (so
    `fleet scale` and `fleet down` need no --driver after `fleet up --driver docker`), else local."""
    if name:
        return get_driver(name, settings)
    state = read_state(settings) or {}
    recorded = state.get("driver")
    return get_driver(recorded if recorded in DRIVERS else "local", settings)


def with_storage(settings: Settings, storage: str | None, driver: str) -> Settings:
    """The settings `fleet up` starts the fleet with: the store `--storage` names (else
    FLEET_STORAGE's), checked before anything starts; a bad value is one line naming it."""
    from fleet.drivers.s3_server import EMBEDDED, find_weed, storage_choice
    from fleet.errors import FleetError, SpecError

    field = "--storage" if storage is not None else "FLEET_STORAGE"
    choice = storage_choice(storage if storage is not None else settings.storage, field)
    if choice == EMBEDDED:
        if driver != "local":
            raise SpecError(field, f"s3 (the embedded S3 server) runs with --driver local only; "
                                   f"with --driver {driver} give an s3://bucket/prefix URL and "
                                   f"FLEET_S3_ENDPOINT")
        try:
            find_weed(settings.s3_server)  # missing: one line now, not from the keeper
        except FleetError as exc:
            raise SpecError(field, f"s3: {exc}") from None
    return settings.model_copy(update={"storage": choice})
