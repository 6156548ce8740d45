"""Building one job env: a virtualenv layered on the node's packages, then pip install.

`python -m venv --system-site-packages` (no pip of its own: the node's pip installs into it
through `pip --python`) gives the job's packages a folder of their own. The node's packages
(torch, TensorFlow, numpy, fleet) stay where the image put them: pip runs with them on
PYTHONPATH, so a requirement they satisfy already is not installed again, and only what is
missing lands in the env. The job process later puts the env's site-packages ahead of the
node's (`workers.process.jobproc`).

pip reads the node's index from PIP_INDEX_URL / PIP_FIND_LINKS in its environment, never from
argv (an index URL may hold a token); the host of a plain-HTTP one is in PIP_TRUSTED_HOST. It
runs in its own session, pinned to the job's cores, under the build's own timeout
(FLEET_ENV_BUILD_TIMEOUT, not the job's), and is killed with its whole group when that passes
or the job is cancelled. Its output goes to `output` as it comes; a failure is a `BuildFailed`
whose message ends with pip's last lines.
"""

from __future__ import annotations

import os
import select
import signal
import site
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from workers.env.policy import failure_summary

TAIL_BYTES = 64 * 1024  # of pip's output, kept for the reason of a failure
POLL_S = 0.2
CANCEL_EVERY_S = 0.5


class BuildFailed(Exception):
    """The env could not be built; the message (one line) becomes the job's reason."""


class BuildCancelled(Exception):
    """The job was cancelled while its env was built or waited for."""


@dataclass(frozen=True)
class Pip:
    """How this node runs pip: its Python, the environment it gives pip, and its index."""

    environ: Mapping[str, str]  # the job's environment (no broker credential)
    index_url: str | None = None
    find_links: str | None = None
    timeout: float = 600.0
    python: str = sys.executable

    def command(self, env: Path, requirements: Sequence[str]) -> list[str]:
        return [self.python, "-m", "pip", "--python", str(python_of(env)), "install",
                "--", *requirements]

    def env(self) -> dict[str, str]:
        """pip's environment: the node's packages visible, the node's index, no questions."""
        paths = [*node_sites(), *filter(None, [self.environ.get("PYTHONPATH")])]
        env = {**self.environ, "PYTHONPATH": os.pathsep.join(paths),
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
               "PIP_PROGRESS_BAR": "off"}
        if self.index_url:
            env["PIP_INDEX_URL"] = self.index_url
        if self.find_links:
            env["PIP_FIND_LINKS"] = self.find_links
        trusted = plain_http_hosts(self.index_url, self.find_links)
        if trusted:
            env["PIP_TRUSTED_HOST"] = " ".join(
                filter(None, [self.environ.get("PIP_TRUSTED_HOST"), *trusted]))
        return env


def plain_http_hosts(*settings: str | None) -> list[str]:
    """The hosts (`host[:port]`) of the plain-HTTP URLs among the node's pip settings (each
    space-separated, as pip reads them). pip ignores an http:// index that is not on localhost
    unless its host is trusted, so an index on a private network (a Compose network's gateway,
    say) would find nothing; the operator named it, so it is trusted. Credentials stay out."""
    hosts = []
    for setting in settings:
        for url in (setting or "").split():
            parts = urlsplit(url)
            if parts.scheme == "http" and parts.hostname:
                hosts.append(parts.netloc.rpartition("@")[2])
    return hosts


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def site_packages(env: Path) -> Path:
    """Where pip installs into `env` (a venv of this interpreter's version)."""
    return env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def node_sites() -> list[str]:
    """The folders of the node's own packages (its venv's or the system's, and the user's)."""
    found = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [p for p in dict.fromkeys(found) if os.path.isdir(p)]


def build(
    target: Path, requirements: Sequence[str], pip: Pip, output: Callable[[bytes], None],
    cancelled: Callable[[], bool], cores: Sequence[int] = (),
) -> None:
    """Make the env at `target` (which must not exist) with `requirements` installed."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(target)
    run(pip.command(target, requirements), pip.env(), pip.timeout, output, cancelled, cores)
    if not site_packages(target).is_dir():
        raise BuildFailed(f"pip left no site-packages in {target}")


def run(
    command: Sequence[str], env: Mapping[str, str], timeout: float,
    output: Callable[[bytes], None], cancelled: Callable[[], bool], cores: Sequence[int] = (),
) -> None:
    """Run `command` (pip) to its end, its output to `output`; BuildFailed when it exits
    non-zero or runs past `timeout` s, BuildCancelled when `cancelled()` turns true."""
    proc = subprocess.Popen(
        list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=dict(env), start_new_session=True,
    )
    assert proc.stdout is not None
    if cores:
        try:
            os.sched_setaffinity(proc.pid, cores)
        except OSError:
            pass  # gone already, or a kernel without affinity: pip runs unpinned
    fd = proc.stdout.fileno()
    tail = bytearray()
    deadline = time.monotonic() + timeout
    next_cancel_check = time.monotonic() + CANCEL_EVERY_S
    try:
        while True:
            if select.select([fd], [], [], POLL_S)[0]:
                data = os.read(fd, 65536)
                if not data:
                    break
                output(data)
                tail = (tail + data)[-TAIL_BYTES:]
            now = time.monotonic()
            if now >= deadline:
                raise BuildFailed(f"pip install ran past {timeout:g} s "
                                  f"(FLEET_ENV_BUILD_TIMEOUT): {_summary(tail)}")
            if now >= next_cancel_check:
                next_cancel_check = now + CANCEL_EVERY_S
                if cancelled():
                    raise BuildCancelled()
        code = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"pip install ran past {timeout:g} s (FLEET_ENV_BUILD_TIMEOUT)") from None
    finally:
        _kill(proc)
        proc.stdout.close()
    if code != 0:
        raise BuildFailed(f"pip install exited with code {code}: {_summary(tail)}")


def _summary(tail: bytes | bytearray) -> str:
    return failure_summary(bytes(tail).decode(errors="replace"))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """pip's whole group (the builds it started too), and its exit status collected."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
