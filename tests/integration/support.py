"""A real fleet for tests: a private Redis, real master and worker processes, the real client.

Processes are started by the local driver's own functions (the code users run), with the test's
settings passed to them as FLEET_* variables. Nothing here mocks a part of fleet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.client import Client
from fleet.drivers.base import NodeShape
from fleet.drivers.local import LocalDriver
from fleet.drivers.processes import stop_processes
from fleet.drivers.redis_server import RedisServer
from fleet.drivers.secret_files import write_secret
from fleet.settings import SECRET_ENV, Settings
from fleet.store import registry
from fleet.units import parse_memory

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll until `check()` is truthy; its value is returned. Fails with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Fleet:
    def __init__(self, settings: Settings, server: RedisServer) -> None:
        self.settings = settings
        self.server = server
        self.driver = LocalDriver(settings)
        self.client = Client(settings)
        self.r = self.client.r
        self.nodes: dict[str, int] = {}
        self.masters: list[int] = []

    # -- processes ---------------------------------------------------------------------------
    def master(self) -> int:
        pid = self.driver.start_master(self.server.url)
        self.masters.append(pid)
        return pid

    def node(self, name: str, cpus: float = 1.0, memory: str = "2Gi",
             cores: list[int] | None = None, wait: bool = True) -> int:
        pid = self.driver.start_node(name, NodeShape(cpus, parse_memory(memory)),
                                     self.server.url, cores)
        self.nodes[name] = pid
        if wait:
            self.wait_nodes({name})
        return pid

    def wait_nodes(self, names: set[str], timeout: float = 60) -> None:
        eventually(lambda: names <= {r["node"] for r in registry.live_reports(self.r)},
                   timeout, what=f"nodes {sorted(names)} to heartbeat")

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        os.kill(pid, sig)
        proc = self.driver.procs.get(pid)
        if proc is not None and sig == signal.SIGKILL:
            proc.wait(10)

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return self.client.wait(job_id, timeout=timeout)

    def wait_state(self, job_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        return eventually(lambda: (s := self.client.status(job_id))["state"] == state and s,
                          timeout, what=f"{job_id} to be {state}")

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run the real `fleet` command line against this fleet, given the Redis URL the way
        the drivers give it: the path of a 0600 file (FLEET_REDIS_URL_FILE), not the URL."""
        write_secret(self.driver.url_file, self.server.url)
        env = {k: v for k, v in {**os.environ, **self.settings.to_env()}.items()
               if k not in SECRET_ENV}
        env["FLEET_REDIS_URL_FILE"] = str(self.driver.url_file)
        return subprocess.run([sys.executable, "-m", "fleet", *args], env=env, text=True,
                              capture_output=True, timeout=120, check=check)

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        stop_processes(list(self.driver.procs.values()), grace=10)

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.driver.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"===== {log.name} =====\n" + "\n".join(text))
        return "\n".join(out)
