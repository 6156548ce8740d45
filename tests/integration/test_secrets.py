"""No secret on any argv or in any environment a job can read.

A real fleet started by the real CLI (`fleet up --detach`: keeper, Redis, master, 2 nodes,
Flower, exporter) with a job running; then every /proc/<pid>/cmdline and /proc/<pid>/environ is
read by an unprivileged user and by a job process, and none may hold the Redis password, the
producer password, Flower's password, or (in the fleet's own processes) a URL with credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import read_state
from tests.integration import procscan
from tests.integration.support import REPO, eventually

pytestmark = pytest.mark.integration

NOBODY = 65534
CREDENTIAL_URL = re.compile(r"\b[a-z]+s?://[^\s/@:]*:[^\s/@]+@")  # scheme://user:password@


def fleet_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.pop("FLEET_REDIS_URL_FILE", None)
    path = os.environ.get("PYTHONPATH")
    env.update({
        "FLEET_HOME": str(home), "FLEET_HEARTBEAT_INTERVAL": "0.5", "FLEET_HEARTBEAT_TTL": "3",
        # the scanning job is allowlisted for this test's fleet only
        "FLEET_ALLOWLIST": json.dumps(["workers.jobs", procscan.__name__]),
        "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
    })
    return env


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path / "home"
    env = fleet_env(home)
    fleet = [sys.executable, "-m", "fleet"]
    out = subprocess.run([*fleet, "up", "--detach", "--workers", "2", "--memory", "1Gi"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    try:
        assert out.returncode == 0, out.stderr
        yield {"home": home, "env": env, "state": read_state(Settings(home=home))}
    finally:
        subprocess.run([*fleet, "down"], env=env, capture_output=True, timeout=120)


def _password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def _tree(proc: dict[str, dict[str, Any]], root: int) -> set[str]:
    """`root` and its descendants, by the ppid each process had when it was read."""
    tree, grew = {str(root)}, True
    while grew:
        grew = False
        for pid, rec in proc.items():
            if pid not in tree and str(rec.get("ppid")) in tree:
                tree.add(pid)
                grew = True
    return tree


def _leaks(scan: dict[str, Any], secrets: dict[str, str], fleet_pids: set[str]) -> list[str]:
    found = []
    for pid, rec in scan["proc"].items():
        for field in ("cmdline", "environ"):
            text = rec.get(field) or ""
            found += [f"{what} in /proc/{pid}/{field}" for what, secret in secrets.items()
                      if secret in text]
            if pid in fleet_pids and CREDENTIAL_URL.search(text):
                found.append(f"a URL with credentials in /proc/{pid}/{field}: "
                             f"{CREDENTIAL_URL.search(text)[0]}...")  # type: ignore[index]
    return found


def _scan_as_nobody() -> dict[str, Any]:
    """procscan.read_proc() as user nobody when we are root (CI), else as ourselves (the fleet's
    own user, who may read more). A forked child drops its user and reads; no exec, so no
    interpreter that nobody may run is needed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            data = json.dumps({"self": os.getpid(), "uid": os.geteuid(),
                               "proc": procscan.read_proc()}).encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_no_process_of_a_running_fleet_shows_a_secret(up: dict[str, Any], tmp_path: Path) -> None:
    state, home = up["state"], up["home"]
    secrets = {"the Redis password": _password(state["redis_url"]),
               "Flower's password": (home / "flower.password").read_text().strip()}
    if state.get("producer_url"):
        secrets["the producer password"] = _password(state["producer_url"])
    client = Client(Settings(home=home, allowlist=["workers.jobs", procscan.__name__]))
    sleeper = client.submit({"name": "running", "entrypoint": "workers.jobs.synthetic:sleep",
                             "params": {"seconds": 60}})
    eventually(lambda: client.status(sleeper)["state"] == "RUNNING", 60, what="a running job")
    dump = tmp_path / "job-scan.json"
    dump.touch(mode=0o666)
    os.chmod(tmp_path, 0o777)  # the job may run as another user than this test
    scanner = client.submit({"name": "scan", "entrypoint": f"{procscan.__name__}:scan",
                             "params": {"out": str(dump)}})
    final = client.wait(scanner, timeout=120)
    assert final["state"] == "SUCCEEDED", final
    by_job = json.loads(dump.read_text())
    by_nobody = _scan_as_nobody()
    assert client.status(sleeper)["state"] == "RUNNING"  # the fleet was whole while we read
    client.cancel(sleeper)

    keeper = state["pids"]["keeper"]
    for scan in (by_job, by_nobody):
        fleet_pids = _tree(scan["proc"], keeper)
        # the keeper, Redis, master, Flower, exporter, 2 nodes (+ fork servers), both jobs
        assert len(fleet_pids) >= 8, sorted(fleet_pids)
        assert _leaks(scan, secrets, fleet_pids) == []
    assert by_nobody["uid"] != 0 or os.geteuid() != 0
    # the job read its own environment: neither the URL nor the path of the file holding it
    own = by_job["proc"][str(by_job["self"])]["environ"]
    assert "FLEET_REDIS_URL" not in own, own
    if by_job["uid"] == 0:  # as root the job read every environment, the fleet's included
        assert all(by_job["proc"][p]["environ"] is not None
                   for p in _tree(by_job["proc"], keeper) if p in by_job["proc"])
