"""The fleet's side of serving other machines: its Redis on FLEET_LISTEN, and the join kit.

What the addresses are and what the kit holds is fleet.listen's; this module starts nothing:
the local driver asks it for the Redis server to start (`fleet_server`: TLS on loopback and
the listen addresses, the plain port closed, when FLEET_LISTEN is set) and, once the fleet is
up, to write the kit (`write_kit`). Without FLEET_LISTEN the server is the loopback one, as
before, and no kit is left behind from an earlier `fleet up --listen`: a kit always names the
fleet running now.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fleet.drivers.redis_server import RedisServer, TlsFiles, new_server
from fleet.drivers.s3_server import S3Server
from fleet.drivers.secret_files import write_secret
from fleet.listen import CA_FILE, LOOPBACK, S3_FILE, URL_FILE, kit_dir, resolve
from fleet.private import private_dir
from fleet.settings import Settings

TLS_DIR = "tls"  # under FLEET_HOME: the fleet's CA and Redis's certificate (fleet.drivers.tls)


def fleet_server(settings: Settings, directory: Path) -> RedisServer:
    """The Redis `fleet up` starts: loopback only, or also FLEET_LISTEN's addresses over TLS
    with a certificate of the fleet's CA (made or reused in FLEET_HOME/tls)."""
    if not settings.listen:
        return new_server(directory, binary=settings.redis_server)
    files, ips = fleet_tls(settings)
    return new_server(directory, tls=files, binary=settings.redis_server, bind=ips)


def fleet_s3(settings: Settings, directory: Path) -> S3Server:
    """The S3 server `fleet up --storage s3` starts: on loopback over plain HTTP, or, when the
    fleet listens, its S3 gateway (only: weed's other ports answer without keys) on the first
    FLEET_LISTEN address over HTTPS with the certificate Redis has."""
    if not settings.listen:
        return S3Server(directory, binary=settings.s3_server)
    files, ips = fleet_tls(settings)
    return S3Server(directory, binary=settings.s3_server, s3_bind=ips[0], tls=files)


def fleet_tls(settings: Settings) -> tuple[TlsFiles, tuple[str, ...]]:
    """The fleet's certificate for loopback and FLEET_LISTEN's addresses (made or reused in
    FLEET_HOME/tls), and those addresses."""
    where = resolve(settings.listen or [], "FLEET_LISTEN")
    from fleet.drivers import tls  # cryptography: only a fleet that listens needs it

    files = tls.ensure(settings.home_dir / TLS_DIR, (LOOPBACK, *where.ips), where.names)
    return files, tuple(where.ips)


def write_kit(settings: Settings, server: RedisServer,
              s3_credentials: Path | None = None) -> Path | None:
    """FLEET_HOME/join for the fleet `server` serves (0700, each file 0600): the CA, the node
    URL (CA path relative to the kit), a copy of the S3 credentials when the fleet runs its
    own S3. Its folder, or None (and no kit) when the fleet does not listen."""
    kit = kit_dir(settings)
    if not settings.listen:
        shutil.rmtree(kit, ignore_errors=True)
        return None
    if server.tls is None:
        raise ValueError("a fleet that listens serves TLS")
    host = resolve(settings.listen, "FLEET_LISTEN").host
    private_dir(kit, tighten=[kit])
    write_secret(kit / CA_FILE, server.tls.ca.read_text())
    write_secret(kit / URL_FILE, server.url_at(host, CA_FILE))
    if s3_credentials is not None:
        write_secret(kit / S3_FILE, s3_credentials.read_text())
    else:
        (kit / S3_FILE).unlink(missing_ok=True)
    return kit
