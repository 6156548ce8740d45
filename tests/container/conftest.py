"""Container tests: a real Docker engine, the real images, the real CLI.

Without an engine they SKIP with the reason, unless FLEET_REQUIRE_DOCKER=1 (CI sets it): then
they FAIL. Images come from `scripts/ci_containers.sh`. Every test removes what it started
(by label, project or stack name), also when it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
def compose_secrets() -> Iterator[Path]:
    """docker/secrets/: the one CI wrote, else a fresh one removed afterwards."""
    path = REPO / "docker" / "secrets"
    made = not (path / "redis_conf").exists()
    if made or not (path / "s3_credentials").exists():  # a folder from before the s3 service
        subprocess.run([str(REPO / "scripts" / "ci_containers.sh"), "env"], check=True)
    yield path
    if made:
        shutil.rmtree(path, ignore_errors=True)


def secret_value(secrets: Path, name: str) -> str:
    return (secrets / name).read_text().strip()


# scheme://user:password@ — a URL that carries a credential
CREDENTIAL_URL = re.compile(r"\b[a-z]+s?://[^\s/@:\"']*:[^\s/@\"']+@")
# Every process's argv and environment in a container, read as the container's user: the
# user its jobs run as, so this is what a job there can read too.
SCAN_PROC = ("for p in /proc/[0-9]*; do cat $p/cmdline; echo; cat $p/environ; echo; done "
             "2>/dev/null | tr '\\0' '\\n'")


def assert_no_secret(container: Any, secrets: dict[str, str]) -> str:
    """From the engine and from inside: no secret and no URL with
    credentials in `docker inspect` (Config.Env, Cmd, Entrypoint, Args, health check: all of
    it) nor in any /proc/<pid>/cmdline or environ in the container. Returns what was read."""
    container.reload()
    inspect = json.dumps(container.attrs)
    inside = container.exec_run(["sh", "-c", SCAN_PROC]).output.decode(errors="replace")
    for where, text in (("docker inspect", inspect), ("/proc inside", inside)):
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {where} of {container.name}"
        found = CREDENTIAL_URL.search(text)
        assert found is None, f"a URL with credentials in {where} of {container.name}: " \
                              f"{found[0] if found else ''}..."
    return inside


def assert_hardened(container: Any) -> None:
    """The container rules, read off the engine: non-root, read-only root filesystem,
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


def compose_down(base: list[str], env: dict[str, str]) -> None:
    """A Compose project's teardown: its last log lines into the test's output, then down with
    its volumes (a later project must not find this one's Redis data or caches)."""
    logs = subprocess.run([*base, "logs", "--tail", "20"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    print(logs.stdout[-6000:])
    subprocess.run([*base, "down", "-v", "--timeout", "20"], env=env, cwd=REPO,
                   capture_output=True, timeout=300)


def docker_fleet_down(docker_client: Any, fid: str | None, env: dict[str, str]) -> None:
    """A docker-driver fleet's teardown: its workers' last log lines, `fleet down`, then any
    container of the fleet that `down` left behind."""
    if fid:
        for c in docker_client.containers.list(all=True, filters={"label": [
                f"fleet.id={fid}", "fleet.role=worker"]}):
            print(f"--- {c.name} ---\n{c.logs(tail=30).decode(errors='replace')}")
    fleet_cli("down", "--driver", "docker", env=env, check=False)
    if fid:
        for c in docker_client.containers.list(all=True, filters={"label": f"fleet.id={fid}"}):
            c.remove(force=True)
