"""A second host for real, in tests: a network namespace joined to this one by a veth pair,
and a filesystem of its own.

`SecondHost.create()` makes a network namespace (`flh-<pid>-<n>`) and a veth pair whose two ends
get the two addresses of a private /30 in 10.251.0.0/16 that no interface or route here uses:
the first host (this namespace) the lower, the second the higher. Nothing but those two
addresses is ever contacted. `cut()` sets the first host's end down (a partition: packets go
nowhere, sockets stay open), `mend()` sets it up again. `close()` kills every process in the
namespace and deletes it (the pair goes with it); `create()` first removes what a killed earlier
run left (names with the prefix whose creating process is gone).

The second host's processes (`spawn`) run in the namespace (`nsenter --net`: unlike `ip netns
exec`, it keeps /sys, and so the cgroup mounts a node confines itself with), with a hostname of
their own (the namespace's name) and a private mount namespace where `shadow` (a directory of
the first host, e.g. the test's tmp dir holding FLEET_HOME) shows `root` (a directory of their
own) and /dev/shm is a new tmpfs: they see the same paths as the first host's processes, but
none of the first host's files. The test still reads `root` from outside (logs, what jobs
wrote), as an operator would read the other machine's disk. The code (repository, virtual
environment) is the one install both hosts run.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PREFIX = "flh-"
NETWORK = ipaddress.IPv4Network("10.251.0.0/16")
_count = itertools.count()

# Run by `sh -c` inside the new mount and UTS namespaces: its own files and name, then the command.
_MOUNTS = """set -e
mount --bind "$1" "$2"
mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm
hostname "$3"
shift 3
exec "$@"
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _creator(name: str) -> int | None:
    """The pid a name of ours was made by (`flh-<pid hex>-<n>[ab]`), None when not ours."""
    found = re.fullmatch(rf"{PREFIX}([0-9a-f]+)-\d+[ab]?", name)
    return int(found[1], 16) if found else None


def clean_leftovers() -> list[str]:
    """Delete the namespaces and veths of ours whose creating process is gone (a killed run),
    killing what still runs in them; the names removed."""
    removed = []
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _creator(name)
        if pid is not None and not psutil.pid_exists(pid):
            _kill_in(name)
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        pid = _creator(name)
        if pid is not None and not psutil.pid_exists(pid):
            _ip("link", "delete", name, check=False)
            removed.append(name)
    return removed


def _kill_in(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 in NETWORK that no address or route here touches (random: two runs at once)."""
    used = [ipaddress.ip_interface(a).network for a in re.findall(
        r"inet (\d+\.\d+\.\d+\.\d+/\d+)", _ip("-4", "-o", "addr", "show").stdout)]
    routes = _ip("-4", "route", "show").stdout
    candidates = list(NETWORK.subnets(new_prefix=30))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used) and str(net.network_address) not in routes:
            return net
    raise RuntimeError(f"no free /30 in {NETWORK}")


@dataclass
class SecondHost:
    ns: str
    veth: str  # the first host's end (the one `cut` downs)
    peer: str  # the second host's end, inside the namespace
    address: str  # the first host's address on the pair: where the second reaches it
    peer_address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls) -> SecondHost:
        """The namespace and its link, up; raises (never skips) when this machine cannot."""
        clean_leftovers()
        ns = f"{PREFIX}{os.getpid():x}-{next(_count)}"
        net = free_subnet()
        first, second = (str(a) for a in itertools.islice(net.hosts(), 2))
        host = cls(ns, ns + "a", ns + "b", first, second)
        try:
            _ip("netns", "add", ns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
            _ip("link", "set", host.peer, "netns", ns)
            _ip("addr", "add", f"{first}/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            for args in (["addr", "add", f"{second}/30", "dev", host.peer],
                         ["link", "set", host.peer, "up"], ["link", "set", "lo", "up"]):
                _ip("-n", ns, *args)
        except BaseException:
            host.close()
            raise
        return host

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], root: Path, shadow: Path,
              log: Path) -> subprocess.Popen[bytes]:
        """Run `argv` on the second host, `shadow` showing `root`; its pid is argv's own (each
        wrapper execs the next), in a session of its own."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns}", "unshare", "--mount", "--uts",
                 "--propagation", "private", "sh", "-c", _MOUNTS, "sh", str(root), str(shadow),
                 self.ns, *argv],
                env=dict(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")

    def mend(self) -> None:
        _ip("link", "set", self.veth, "up")

    def close(self) -> None:
        """Everything gone, whatever state the test left it in."""
        _kill_in(self.ns)
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(10)
        _ip("netns", "delete", self.ns, check=False)
        _ip("link", "delete", self.veth, check=False)  # already gone with the namespace


def tls_files(directory: Path, addresses: Sequence[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate valid for `addresses` (IPs), made with openssl:
    (cert, key, ca). A client on either host verifies the server against the CA."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    directory.mkdir(parents=True, exist_ok=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=fleet-hosts-ca", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={addresses[0]}", "-keyout",
        "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text(
        "subjectAltName=" + ",".join(f"IP:{a}" for a in addresses) + "\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return directory / "server.pem", directory / "server.key", directory / "ca.pem"
