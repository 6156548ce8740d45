"""The two-host tests' fleet: the first host (this namespace: master, Redis, its nodes) and a
second (tests/hosts.py: a network namespace behind a veth pair, a filesystem of its own) whose
worker nodes join over TCP to the first host's Redis, with TLS and its password.

The second host's nodes reach Redis at the first host's veth address only, from a URL in a 0600
file on their own disk. Every path is the same on both hosts (FLEET_HOME, the jobs' witness
logs), every file is not: a test reads each host's disk from outside, as an operator would read
two machines'. Test modules import the fixtures from here (pytest registers them there).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.drivers.redis_server import RedisServer, TlsFiles, new_server
from fleet.drivers.secret_files import service_env, write_secret
from fleet.settings import Settings
from tests.hosts import SecondHost, tls_files
from tests.integration.support import Fleet

PARTITION_S = 30.0
ENTRYPOINT = "tests.integration.fencing_job:witnessed_steps"
ALLOWLIST = ["workers.jobs", "tests.integration.fencing_job", "tests.integration.hosts_job"]


@pytest.fixture
def second_host() -> Iterator[SecondHost]:
    host = SecondHost.create()  # no skip: CI runs as root, and a failure here is a failure
    yield host
    host.close()


@pytest.fixture
def redis_server(tmp_path: Path, second_host: SecondHost) -> Iterator[RedisServer]:
    """TLS only, with a password, listening on loopback and on the first host's veth end."""
    cert, key, ca = tls_files(tmp_path / "tls", ["127.0.0.1", second_host.address])
    server = new_server(tmp_path / "redis", tls=TlsFiles(cert, key, ca),
                        binary=Settings().redis_server).start()
    server.client().config_set("bind", f"127.0.0.1 {second_host.address}")
    yield server
    server.stop()


class Host2:
    """The second host's side of a test: its disk (`root`, seen there as `shadow`, the test's
    tmp dir) and its worker nodes.

    Its nodes get the first host's settings less the published ones (the storage URL and the
    S3 endpoint): those they read from Redis, as a node on another machine would. What is a
    file of the first host's (the Redis CA, the S3 credentials) the operator copies over."""

    def __init__(self, host: SecondHost, fleet: Fleet, tmp_path: Path) -> None:
        self.host, self.fleet = host, fleet
        self.shadow, self.root = tmp_path, tmp_path / "host2"
        settings = fleet.settings
        self.home = self.outside(settings.home_dir)
        self.url = fleet.server.url.replace("@127.0.0.1:", f"@{host.address}:", 1)
        assert self.url != fleet.server.url
        ca = fleet.server.tls.ca if fleet.server.tls else None
        assert ca is not None
        shutil.copy(ca, self.outside(ca, mkdir=True))  # the operator copies the CA over
        if settings.s3_credentials_file is not None:
            write_secret(self.outside(settings.s3_credentials_file),
                         settings.s3_credentials_file.read_text())
        write_secret(self.home / "secrets" / "redis.url", self.url)
        own = settings.model_copy(update={"storage": None, "s3_endpoint": None})
        self.env = service_env(own, settings.home_dir / "secrets" / "redis.url",
                               settings.home_dir)
        self.nodes: dict[str, int] = {}

    def outside(self, path: Path, mkdir: bool = False) -> Path:
        """Where the second host's `path` lies on the test's disk."""
        mine = self.root / path.relative_to(self.shadow)
        if mkdir:
            mine.parent.mkdir(parents=True, exist_ok=True)
        return mine

    def node(self, name: str, cores: list[int], wait: bool = True) -> int:
        argv = [sys.executable, "-m", "workers.main", "--node-id", name, "--cpus", "1",
                "--memory", str(2 << 30), "--cpuset", ",".join(map(str, cores)), "--cgroup"]
        proc = self.host.spawn(argv, env=self.env, root=self.root, shadow=self.shadow,
                               log=self.home / "logs" / f"{name}.log")
        self.nodes[name] = proc.pid
        if wait:
            self.fleet.wait_nodes({name}, timeout=60)
        return proc.pid

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"===== host2 {log.name} =====\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-lines:])
            for log in sorted((self.home / "logs").glob("*.log")))


@pytest.fixture
def host2(second_host: SecondHost, fleet: Fleet, tmp_path: Path) -> Iterator[Host2]:
    h = Host2(second_host, fleet, tmp_path)
    yield h
    second_host.close()  # before the fleet stops: its nodes are not the fleet's children
    print(h.log_tails())


# -- the jobs' own witness, one file per host ----------------------------------------------------
def witness(host2: Host2, tmp_path: Path, name: str = "steps") -> tuple[Path, Path]:
    """The job's log path (the same on both hosts) and where the second host's copy lies."""
    log = tmp_path / "witness" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log, host2.outside(log, mkdir=True)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def steps_of(lines: list[dict[str, Any]], attempt: int) -> list[float]:
    return [x["time"] for x in lines if x.get("attempt") == attempt and "step" in x]


def overlap(a: list[float], b: list[float]) -> float:
    """Seconds during which two attempts' logged steps interleave (0 when one ended first)."""
    if not a or not b:
        return 0.0
    return max(0.0, min(max(a), max(b)) - max(min(a), min(b)))


def far_clients(fleet: Fleet, host2: Host2) -> list[dict[str, Any]]:
    """Redis connections from the second host's address: they came over the veth."""
    assert fleet.r is not None
    return [c for c in fleet.r.client_list()
            if c["addr"].rsplit(":", 1)[0] == host2.host.peer_address]
