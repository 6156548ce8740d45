"""The files settings point at: the state file `fleet up` writes, and the secret URL file.

Kept apart from `fleet.settings` so that reading settings touches nothing on disk: the file
I/O happens only where a command asks for the Redis URL or a driver records what it started.
The Redis URL is resolved here: FLEET_REDIS_URL, else the file FLEET_REDIS_URL_FILE names,
else the URL `fleet up` recorded, so that `fleet submit` finds the fleet it started without
flags; the store likewise (`with_recorded_storage`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.private import private_dir
from fleet.settings import Settings


def redis_url(settings: Settings) -> str:
    """The URL given, else the one in FLEET_REDIS_URL_FILE (what a driver gives the processes
    it starts, so no password sits in their environment), else the one `fleet up` recorded,
    else a clear error."""
    if settings.redis_url:
        return settings.redis_url
    if settings.redis_url_file:
        return read_secret_file(settings.redis_url_file, "FLEET_REDIS_URL_FILE")
    state = read_state(settings)
    if state and state.get("redis_url"):
        return str(state["redis_url"])
    raise FleetError(
        f"no fleet found: set FLEET_REDIS_URL or start one with `fleet up` "
        f"(no state file at {settings.state_file})"
    )


def read_secret_file(path: Path, variable: str) -> str:
    """The first line of a secret file, or a one-line error naming the variable that named it."""
    try:
        text = path.expanduser().read_text().strip()
    except OSError as exc:
        raise FleetError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise FleetError(f"{variable}: {path} is empty; expected a redis:// or rediss:// URL")
    return text.splitlines()[0].strip()


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The state `fleet up` recorded, or None when there is none (or it is unreadable)."""
    try:
        state: dict[str, Any] | None = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state


def write_state(settings: Settings, state: dict[str, Any]) -> None:
    """Written 0600 and atomically: it holds the Redis password inside the URL."""
    path = settings.state_file
    private_dir(path.parent, tighten=[path.parent])
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def remove_state(settings: Settings) -> None:
    """Forget the fleet: after `fleet down`, `fleet submit` no longer finds a URL here."""
    settings.state_file.unlink(missing_ok=True)


def with_recorded_storage(settings: Settings) -> Settings:
    """`settings` with the store `fleet up` recorded, where they name none (or `s3`, which
    means something to `fleet up` alone): a command on this machine (`fleet artifacts`,
    `fleet logs`) reads the store the fleet writes, its S3 keys from the 0600 file the state
    names, with no FLEET_* variable set."""
    if settings.storage and settings.storage != "s3":
        return settings
    state = read_state(settings) or {}
    if not state.get("storage"):
        return settings
    update: dict[str, Any] = {"storage": state["storage"]}
    if state.get("s3_endpoint") and not settings.s3_endpoint:
        update["s3_endpoint"] = state["s3_endpoint"]
    if state.get("s3_credentials_file") and settings.s3_credentials_file is None:
        update["s3_credentials_file"] = Path(state["s3_credentials_file"])
    if state.get("s3_ca_file") and settings.s3_ca_file is None:
        update["s3_ca_file"] = Path(state["s3_ca_file"])
    return settings.model_copy(update=update)
