"""Secrets handed to the processes a driver starts as files, never as argv or environment.

A process's command line is readable by every user (`/proc/<pid>/cmdline`) and its environment
by every process of its user, jobs included (`/proc/<pid>/environ`). So a driver writes each
secret to a 0600 file in a 0700 folder and passes only the file's path: FLEET_REDIS_URL_FILE
(the Docker `*_FILE` convention) for the Redis URL, a Flower config file for Flower's login.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleet.settings import SECRET_ENV, Settings

URL_FILE_ENV = "FLEET_REDIS_URL_FILE"


def write_secret(path: Path, text: str, *, uid: int | None = None) -> Path:
    """Write `text` to `path` as a 0600 file (owned by `uid` when given and we may), atomically:
    a reader never sees a half-written secret, and the file is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    if uid is not None:
        os.chown(tmp, uid, uid)
    tmp.replace(path)
    return path


def flower_config(user: str, password: str) -> str:
    """A Flower config file (Python, read by Flower's --conf) that turns basic auth on."""
    return f"basic_auth = [{f'{user}:{password}'!r}]\n"


def service_env(settings: Settings, url_file: Path | str, home: Path | str) -> dict[str, str]:
    """The environment of a process a driver starts: this one's, less every secret variable,
    plus the fleet's settings and the path (not the content) of the Redis URL file."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV and k != URL_FILE_ENV}
    env.update({k: v for k, v in settings.to_env().items() if k not in SECRET_ENV})
    env.update({URL_FILE_ENV: str(url_file), "FLEET_HOME": str(home)})
    return env
