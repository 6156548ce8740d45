"""The Docker engine as the docker driver (and swarm) use it: the SDK client, the fleet's images,
and removing a fleet by its labels.

Images that are missing are built, never pulled: from `docker/Dockerfile` of the checkout this
package runs from (after `scripts/base_image.sh`, which provides the base image without a
registry). Every container and volume of a fleet carries the labels `fleet.id` and `fleet.role`
(workers `fleet.node` too), which is how a fleet is found again, also after a crash of the CLI.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
LABEL_ID, LABEL_ROLE, LABEL_NODE = "fleet.id", "fleet.role", "fleet.node"
STOP_TIMEOUT_S = 30


def sdk() -> Any:
    """The Docker SDK (`docker` package), imported by name: this module is also called docker."""
    try:
        return importlib.import_module("docker")
    except ImportError:
        raise FleetError("the docker driver needs the `docker` package: pip install docker") from None


def engine() -> Any:
    """A Docker SDK client, or a one-line error saying how to get an engine."""
    docker = sdk()
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise FleetError(f"no Docker engine answers ({type(exc).__name__}); start one with "
                         "`sudo scripts/docker_engine.sh` or set DOCKER_HOST") from None
    return client


def has_gpus(client: Any) -> bool:
    """GPUs are handed to workers when the engine has the NVIDIA runtime and the host a GPU."""
    runtimes = client.info().get("Runtimes") or {}
    return "nvidia" in runtimes and shutil.which("nvidia-smi") is not None


def image_exists(client: Any, image: str) -> bool:
    docker = sdk()
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_images(client: Any, images: Iterable[str], log: Callable[[str], None]) -> None:
    """Build the fleet images that are missing (never pulled: fleet builds its own)."""
    missing = [i for i in dict.fromkeys(images) if not image_exists(client, i)]
    if not missing:
        return
    if not DOCKERFILE.is_file():
        raise FleetError(f"image {missing[0]} is missing and there is no docker/Dockerfile to "
                         "build it from (run from a checkout, or build the images: "
                         "docs/containers.md)")
    base = REPO / "scripts" / "base_image.sh"
    if not image_exists(client, "python:3.11-slim") or not any((REPO / "docker/wheels").glob("*")):
        log(f"preparing the base image and wheels: {base}")
        _run([str(base)], "base_image")
    for image in missing:
        _build(image.split("/")[-1].split(":")[0], image, log)


def _build(target: str, image: str, log: Callable[[str], None]) -> None:
    log(f"building {image} (docker/Dockerfile, target {target}); a first build takes minutes")
    _run(["docker", "build", "--network", "host", "-f", str(DOCKERFILE), "--target", target,
          "-t", image, str(REPO)], f"build-{target}")


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise FleetError(f"{argv[0]} not found: it is needed to build the images ({what})")
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise FleetError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def remove_fleet(client: Any, fid: str) -> int:
    """Remove every container and volume labelled with fleet id `fid`; how many containers.
    Workers first (they stop within their grace), Redis last."""
    docker = sdk()

    found = client.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})
    # Workers get SIGTERM together (Celery's warm shutdown), then the services, Redis last.
    for roles, grace in ((("worker",), STOP_TIMEOUT_S), (("master", "flower"), 10), (("redis",), 10)):
        group = [c for c in found if c.labels.get(LABEL_ROLE) in roles]
        for c in group:
            try:
                if c.status == "running":
                    c.kill(signal="SIGTERM")
            except docker.errors.APIError:
                pass
        deadline = time.monotonic() + grace
        for c in group:
            try:
                while time.monotonic() < deadline:
                    c.reload()
                    if c.status != "running":
                        break
                    time.sleep(0.2)
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
    for v in client.volumes.list(filters={"label": f"{LABEL_ID}={fid}"}):
        try:
            v.remove(force=True)
        except docker.errors.APIError:
            pass
    return len(found)
