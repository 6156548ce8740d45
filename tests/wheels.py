"""Tiny pure-Python wheels and a PEP 503 index of them, made by the tests themselves: no network.

A wheel is a zip with the package, `METADATA`, `WHEEL` and a `RECORD` of sha256 hashes; the
index is a folder `simple/<project>/<wheel>` served by http.server's handler on 127.0.0.1 (or on
the gateway of a container network a test made), whose directory listings are the simple
index's pages.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def make_wheel(folder: Path, name: str, version: str, files: Mapping[str, str]) -> Path:
    """`<name>-<version>-py3-none-any.whl` in `folder`; `files`: path in the wheel -> text."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: fleet-tests\n"
                                   "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    contents = {**files, **meta}
    record = [f"{path},sha256={_digest(text.encode())},{len(text.encode())}"
              for path, text in contents.items()]
    record.append(f"{dist}.dist-info/RECORD,,")
    path = folder / f"{dist}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for member, text in contents.items():
            z.writestr(member, text)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def simple_index(root: Path, wheels: Mapping[str, Path]) -> Path:
    """`root/simple/<project>/` holding each project's wheel; returns `root/simple`."""
    for project, wheel in wheels.items():
        target = root / "simple" / project
        target.mkdir(parents=True, exist_ok=True)
        (target / wheel.name).write_bytes(wheel.read_bytes())
    return root / "simple"


# http.server's handler, each answer `delay` s late, and `hang` s for a path with "hang" in it
SERVER = """
import functools, http.server, sys, time
class Slow(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[3]) if "hang" in self.path else float(sys.argv[2]))
        super().do_GET()
    def log_message(self, *args):
        pass
handler = functools.partial(Slow, directory=sys.argv[1])
http.server.ThreadingHTTPServer((sys.argv[5], int(sys.argv[4])), handler).serve_forever()
"""


@contextmanager
def served(folder: Path, delay: float = 0.0, hang: float = 0.0,
           host: str = "127.0.0.1") -> Iterator[str]:
    """`folder` over HTTP on `host` (a free port) for as long as the block runs; its URL.
    Each answer comes `delay` s late; one for a path holding "hang", `hang` s late. `host` is
    loopback, or an address of a network a test made (a container network's gateway)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(folder), str(delay), str(hang), str(port), host],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the test's package index did not start") from None
                time.sleep(0.05)
        yield f"http://{host}:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)
