"""Container tests: a real Docker engine, the real images, the real CLI.

Without an engine they SKIP with the reason, unless FLEET_REQUIRE_DOCKER=1 (CI sets it): then
they FAIL. Images come from `scripts/ci_containers.sh`. Every test removes what it started
(by label, project or stack name), also when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, "-m", "fleet"]
IMAGES = ("fleet/control", "fleet/worker", "fleet/worker-torch", "fleet/worker-tf")


def _unavailable(reason: str) -> None:
    if os.environ.get("FLEET_REQUIRE_DOCKER") == "1":
        pytest.fail(f"FLEET_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # no SDK, no socket, no engine: all mean "no engine here"
        _unavailable(f"no Docker engine answers ({type(exc).__name__}: {exc}); "
                     "start one with `sudo scripts/ci_containers.sh`")
    missing = [i for i in IMAGES if not client.images.list(name=i)]
    if missing:
        _unavailable(f"images missing: {', '.join(missing)}; build them with "
                     "`scripts/ci_containers.sh images`")
    return client


def fleet_cli(*args: str, env: dict[str, str], timeout: float = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FLEET, *args], env={**os.environ, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleet {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def fleet_json(*args: str, env: dict[str, str]) -> Any:
    return json.loads(fleet_cli(*args, "--json", env=env).stdout)


@pytest.fixture(scope="session")
def compose_env_file() -> Iterator[Path]:
    """docker/compose.env: the one CI wrote, else a fresh one removed afterwards."""
    path = REPO / "docker" / "compose.env"
    made = not path.exists()
    if made:
        subprocess.run([str(REPO / "scripts" / "ci_containers.sh"), "env"], check=True)
    yield path
    if made:
        path.unlink(missing_ok=True)


def env_value(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise KeyError(key)


def assert_hardened(container: Any) -> None:
    """Issue 6's container rules, read off the engine: non-root, read-only root filesystem,
    every capability dropped, no privilege gain, no Docker socket, not privileged."""
    attrs, host = container.attrs, container.attrs["HostConfig"]
    name = container.name
    assert attrs["Config"]["User"] not in ("", "0", "root", "0:0"), name
    assert host.get("ReadonlyRootfs") is True, name
    assert [c.upper() for c in host.get("CapDrop") or []] in (["ALL"], ["CAP_ALL"]), name
    assert any(o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or []), name
    assert not host.get("Privileged"), name
    mounts = [f"{m.get('Source', '')} {m.get('Destination', '')}" for m in attrs["Mounts"]]
    assert not any("docker.sock" in m for m in mounts), (name, mounts)
