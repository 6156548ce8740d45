"""Find every process of one local fleet, also those no state file recorded.

`fleet down` stops the pids `fleet up` recorded, then sweeps: a master started by hand with
`fleet master`, a Redis restarted by hand on the fleet's config, a node a crashed CLI never wrote
down. A process is of this fleet when it is a fleet program (a fleet service, a worker, Celery,
a Redis or S3 server) and it names this fleet: its command line holds FLEET_HOME's path, its
environment's FLEET_HOME or FLEET_REDIS_URL_FILE points here, or its FLEET_REDIS_URL points at
this fleet's Redis port; a Redis server also when it works in a folder under FLEET_HOME or
serves this fleet's port (it retitles itself `redis-server 127.0.0.1:PORT`, so its command line
no longer shows its config file). Shells and other programs that merely export FLEET_HOME are never taken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

# `python -m fleet <command>`: the long-running ones a fleet is made of (a `fleet jobs` in
# another terminal is left alone).
FLEET_SERVICES = frozenset({"master", "exporter", "worker", "up", "demo"})
PYTHON_MODULES = ("workers", "celery", "fleet.drivers.keeper", "fleet.observe.flower_app")
SERVER_NAMES = ("redis-server", "valkey-server", "weed")  # weed: the embedded S3
DEFAULT_HOME = "~/.fleet"


def is_fleet_program(argv: Sequence[str]) -> bool:
    """A fleet service, worker, fork server, job, Flower, keeper or Redis server, by its argv."""
    if not argv:
        return False
    exe = os.path.basename(argv[0])
    if exe.startswith(SERVER_NAMES):
        return True
    rest = list(argv[1:])
    if exe in ("fleet", "celery"):
        return exe == "celery" or (bool(rest) and rest[0] in FLEET_SERVICES)
    if "python" not in exe or "-m" not in rest:
        return False
    i = rest.index("-m")
    module = rest[i + 1] if i + 1 < len(rest) else ""
    if module == "fleet":
        return i + 2 < len(rest) and rest[i + 2] in FLEET_SERVICES
    return any(module == m or module.startswith(m + ".") for m in PYTHON_MODULES)


def redis_port(url: str | None) -> int | None:
    try:
        return urlsplit(url).port if url else None
    except ValueError:
        return None


def belongs(argv: Sequence[str], env: Mapping[str, str], home: Path, port: int | None,
            cwd: Path | None = None) -> bool:
    """Whether the process with this argv, environment and working folder is of the fleet at
    `home` (resolved) whose Redis listens on `port`. Pure: tested with plain values."""
    if not is_fleet_program(argv):
        return False
    if any(str(home) in arg for arg in argv):
        return True
    if os.path.basename(argv[0]).startswith(SERVER_NAMES):
        return (cwd is not None and cwd.is_relative_to(home)) or (
            port is not None and any(arg.endswith(f":{port}") for arg in argv))
    if env.get("FLEET_HOME"):
        return _resolve(env["FLEET_HOME"]) == home
    if env.get("FLEET_REDIS_URL_FILE"):
        return _resolve(env["FLEET_REDIS_URL_FILE"]).is_relative_to(home)
    if env.get("FLEET_REDIS_URL"):
        return port is not None and redis_port(env["FLEET_REDIS_URL"]) == port
    return home == _resolve(DEFAULT_HOME)  # no FLEET_HOME: the default home's fleet


def fleet_processes(home: Path, port: int | None) -> list[int]:
    """Pids of the processes of the fleet at `home`, never this process or its ancestors."""
    home = _resolve(str(home))
    spared = set(_ancestors(os.getpid()))
    return [pid for pid, argv, env, cwd in _processes()
            if pid not in spared and belongs(argv, env, home, port, cwd)]


def _processes() -> Iterator[tuple[int, list[str], dict[str, str], Path | None]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in
                    (entry / "cmdline").read_bytes().split(b"\0") if a]
            raw = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's: not ours to stop
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2]
                   for item in raw.split(b"\0") if b"=" in item)
        try:
            cwd: Path | None = Path(os.readlink(entry / "cwd"))
        except OSError:
            cwd = None
        yield int(entry.name), argv, env, cwd


def _ancestors(pid: int) -> Iterator[int]:
    for _ in range(4096):  # bounded: a pid chain ends at 1
        yield pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 0:
            return


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()
