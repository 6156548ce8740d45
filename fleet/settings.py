"""One typed settings object, read once at the edge (CLI, worker, master) and passed down.

Every field comes from a `FLEET_*` environment variable or its default. No other module reads the
environment. The Redis URL, when not given, comes from the state file that `fleet up` wrote, so
that `fleet submit` finds the fleet it started without flags.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY = 24 * 3600


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    home: Path = Field(default=Path("~/.fleet"), description="state file, secrets, artifacts")
    redis_url: str | None = Field(default=None, description="the fleet's Redis; else state file")
    redis_url_file: Path | None = Field(
        default=None, description="a 0600 file holding the Redis URL (kept off argv and environ)"
    )
    policy: str = Field(default="spread", description="placement policy of the fleet")
    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_ttl: float = Field(default=5.0, gt=0, description="silence after which a node is dead")
    max_job_timeout: int = Field(default=7 * DAY, gt=0, description="the longest timeout a job may ask")
    visibility_timeout: int | None = Field(
        default=None, gt=0, description="broker redelivery delay; default max_job_timeout + 1 h"
    )
    allowlist: list[str] = Field(
        default_factory=lambda: ["workers.jobs"],
        description="modules (and their submodules) whose functions may run as jobs",
    )
    artifacts: Path | None = Field(default=None, description="checkpoint and log store; home/artifacts")
    master_lease_ttl: float = Field(default=5.0, gt=0)
    result_expires: int = Field(default=7 * DAY, gt=0)

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def state_file(self) -> Path:
        return self.home_dir / "state.json"

    @property
    def artifacts_dir(self) -> Path:
        return (self.artifacts or self.home_dir / "artifacts").expanduser()

    @property
    def broker_visibility_timeout(self) -> int:
        """Above the longest job a user may ask for: a long job is never delivered twice."""
        return self.visibility_timeout or self.max_job_timeout + 3600

    def to_env(self) -> dict[str, str]:
        """The settings as FLEET_* variables, for the processes a driver starts."""
        env = {}
        for name, value in self.model_dump(mode="json", exclude_defaults=True).items():
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            env[f"FLEET_{name.upper()}"] = text
        return env

    def resolved_redis_url(self) -> str:
        """The URL given, else the one in FLEET_REDIS_URL_FILE (what a driver gives the processes
        it starts, so no password sits in their environment), else the one `fleet up` recorded,
        else a clear error."""
        if self.redis_url:
            return self.redis_url
        if self.redis_url_file:
            return read_secret_file(self.redis_url_file, "FLEET_REDIS_URL_FILE")
        state = read_state(self)
        if state and state.get("redis_url"):
            return str(state["redis_url"])
        from fleet.errors import FleetError

        raise FleetError(
            f"no fleet found: set FLEET_REDIS_URL or start one with `fleet up` "
            f"(no state file at {self.state_file})"
        )


# Variables that hold a password or a URL with one: a driver never passes them on, and a job
# process never sees them (workers.supervisor strips them).
SECRET_ENV = frozenset({"FLEET_REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                        "FLOWER_BASIC_AUTH", "REDIS_PASSWORD", "REDISCLI_AUTH"})


def read_secret_file(path: Path, variable: str) -> str:
    """The first line of a secret file, or a one-line error naming the variable that named it."""
    from fleet.errors import FleetError

    try:
        text = path.expanduser().read_text().strip()
    except OSError as exc:
        raise FleetError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise FleetError(f"{variable}: {path} is empty; expected a redis:// or rediss:// URL")
    return text.splitlines()[0].strip()


def read_state(settings: Settings) -> dict | None:
    """The state `fleet up` recorded, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return None


def write_state(settings: Settings, state: dict) -> None:
    """Written 0600 and atomically: it holds the Redis password inside the URL."""
    path = settings.state_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)
