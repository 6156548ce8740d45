"""`fleet up --listen` for real: a node on a second host (tests/hosts.py: a network namespace
behind a veth pair, a filesystem of its own) joins with the join kit alone.

The first host runs `fleet up --listen <its veth address> --workers 0 --detach` (keeper, Redis
TLS only on loopback and that address, master, Flower, exporter). The kit is copied onto the
second host's disk, as an operator would copy it; there `FLEET_JOIN=<kit> fleet worker` is all
that starts a node: it joins over the veth, runs a job, and the address serves nothing in
plain text nor to a wrong password.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from fleet.client import Client
from fleet.drivers.processes import alive
from fleet.settings import SECRET_ENV, Settings
from fleet.statefile import read_state
from tests.hosts import SecondHost
from tests.integration import two_hosts
from tests.integration.support import REPO, eventually

pytestmark = pytest.mark.integration

FLEET = [sys.executable, "-m", "fleet"]

# Run on the second host with FLEET_JOIN set: what the address answers to a plain connection
# (with the right password), to TLS with a wrong password, and to TLS without the fleet's CA.
PROBE = """
import json, redis
from urllib.parse import urlsplit
from fleet.listen import joined
from fleet.settings import Settings
url = joined(Settings()).redis_url
u = urlsplit(url)
tries = {
    "plain": f"redis://:{u.password}@{u.hostname}:{u.port}/0",
    "wrong_password": url.replace(f":{u.password}@", ":wrong@", 1),
    "no_ca": url.split("?", 1)[0] + "?ssl_cert_reqs=required",
    "kit": url,
}
out = {}
for name, attempt in tries.items():
    try:
        redis.Redis.from_url(attempt, socket_timeout=5, socket_connect_timeout=5).ping()
        out[name] = "served"
    except redis.exceptions.RedisError as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print("PROBE " + json.dumps(out), flush=True)
"""


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SECRET_ENV and k not in ("FLEET_REDIS_URL_FILE", "FLEET_LISTEN",
                                                "FLEET_JOIN")}
    path = os.environ.get("PYTHONPATH")
    env.update({"FLEET_HOME": str(home), "FLEET_HEARTBEAT_INTERVAL": "0.5",
                "FLEET_HEARTBEAT_TTL": "3",
                "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), **extra})
    return env


second_host = two_hosts.second_host  # the fixture, registered in this module


@pytest.fixture
def up(tmp_path: Path, second_host: SecondHost, request: pytest.FixtureRequest,
       ) -> Iterator[dict[str, Any]]:
    home = tmp_path / "home"
    env = env_for(home)
    extra = getattr(request, "param", [])
    out = subprocess.run([*FLEET, "up", "--listen", second_host.address, "--workers", "0",
                          "--detach", *extra], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    try:
        assert out.returncode == 0, out.stderr + out.stdout
        yield {"home": home, "env": env, "stdout": out.stdout, "state": read_state(
            Settings(home=home))}
    finally:
        subprocess.run([*FLEET, "down"], env=env, capture_output=True, timeout=120)


def test_a_node_on_another_host_joins_with_the_kit_alone(
    up: dict[str, Any], second_host: SecondHost, tmp_path: Path
) -> None:
    home, state = up["home"], up["state"]
    kit = home / "join"
    hint = [line for line in up["stdout"].splitlines() if "FLEET_JOIN=" in line]
    assert len(hint) == 1 and str(kit) in hint[0], up["stdout"]
    conf = (home / "redis" / "redis.conf").read_text()
    assert f"bind 127.0.0.1 {second_host.address}\n" in conf and "port 0\n" in conf
    # the operator copies the kit to the other machine: its disk is `root`, seen there as tmp_path
    root = tmp_path / "host2"
    shutil.copytree(kit, root / "kit")
    far_home = tmp_path / "h2"  # the second host's FLEET_HOME, on its own disk
    env = env_for(far_home, FLEET_JOIN=str(tmp_path / "kit"))
    far_log = root / "h2" / "far-1.log"
    far = second_host.spawn([*FLEET, "worker", "--node-id", "far-1", "--cpus", "1", "--memory",
                             "1Gi"], env=env, root=root, shadow=tmp_path, log=far_log)
    client = Client(Settings(home=home))
    try:
        node = eventually(lambda: {n["node"]: n for n in client.nodes()}.get("far-1"), 60,
                          what="far-1 heartbeating")
        assert node["host"] == second_host.ns, node
        # the node was given a path, never the password (each wrapper execs the next: its pid)
        password = urlsplit(state["redis_url"]).password
        assert password and "workers.main" in Path(f"/proc/{far.pid}/cmdline").read_text()
        for field in ("cmdline", "environ"):
            assert password not in Path(f"/proc/{far.pid}/{field}").read_text(), field
        listed = subprocess.run([*FLEET, "nodes"], env=up["env"], capture_output=True,
                                text=True, timeout=60)
        assert "far-1" in listed.stdout, listed
        operator = redis.Redis.from_url(state["redis_url"])
        assert any(c["addr"].rsplit(":", 1)[0] == second_host.peer_address
                   for c in operator.client_list()), "no connection over the veth"
        job_id = client.submit({"name": "far", "entrypoint": "workers.jobs.synthetic:noop"})
        final = eventually(lambda: (s := client.status(job_id))["state"] in (
            "SUCCEEDED", "FAILED", "CANCELLED") and s, 60, what="the job done")
        assert final["state"] == "SUCCEEDED" and final["node"] == "far-1", final
        # what the address answers to everything but the kit's URL, asked from the second host
        probe_log = root / "h2" / "probe.log"
        proc = second_host.spawn([sys.executable, "-c", PROBE], env=env, root=root,
                                 shadow=tmp_path, log=probe_log)
        assert proc.wait(60) == 0, probe_log.read_text()
        answers = json.loads(probe_log.read_text().split("PROBE ", 1)[1])
        print(answers)
        assert answers["kit"] == "served"
        assert answers["plain"].startswith("ConnectionError"), answers
        assert answers["wrong_password"].startswith("AuthenticationError"), answers
        assert "certificate verify failed" in answers["no_ca"], answers
    finally:
        print(far_log.read_text(errors="replace")[-4000:] if far_log.exists() else "no far log")
    # the second host's disk holds the kit and its node's files; the first host's none of them
    assert not (home / "logs" / "far-1.log").exists() and (root / "h2" / "far-1.log").exists()
    pids = state["pids"]
    down = subprocess.run([*FLEET, "down"], env=up["env"], capture_output=True, text=True,
                          timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(alive(pids[name]) for name in ("keeper", "redis", "master", "flower",
                                                  "exporter")), pids
    with pytest.raises(redis.exceptions.ConnectionError):
        operator.ping()


@pytest.mark.parametrize("up", [["--storage", "s3"]], indirect=True)
def test_a_node_on_another_host_stores_to_the_fleets_s3_over_https(
    up: dict[str, Any], second_host: SecondHost, tmp_path: Path
) -> None:
    """With `--storage s3` the kit carries the S3 keys too, and the S3 gateway serves the
    other host over HTTPS (the certificate Redis has) on the listen address alone."""
    import ssl
    import urllib.request

    from fleet.storage import open_storage
    from fleet.storage.layout import job_prefix

    home, state = up["home"], up["state"]
    endpoint = state["s3_endpoint"]
    assert endpoint.startswith(f"https://{second_host.address}:"), state
    assert (home / "join" / "s3.credentials").stat().st_mode & 0o777 == 0o600
    with pytest.raises(OSError):  # no plain HTTP on the gateway's port
        urllib.request.urlopen(endpoint.replace("https://", "http://"), timeout=5)
    with pytest.raises(OSError):  # nor HTTPS to a client that does not know the fleet's CA
        urllib.request.urlopen(endpoint, timeout=5, context=ssl.create_default_context())
    root = tmp_path / "host2"
    shutil.copytree(home / "join", root / "kit")
    env = env_for(tmp_path / "h2", FLEET_JOIN=str(tmp_path / "kit"))
    far_log = root / "h2" / "far-1.log"
    second_host.spawn([*FLEET, "worker", "--node-id", "far-1", "--cpus", "1", "--memory",
                       "1Gi"], env=env, root=root, shadow=tmp_path, log=far_log)
    client = Client(Settings(home=home))
    try:
        eventually(lambda: {n["node"] for n in client.nodes()} >= {"far-1"}, 60,
                   what="far-1 heartbeating")
        job_id = client.submit({"name": "far-ckpt", "entrypoint": "workers.jobs.digits_torch:train",
                                "framework": "torch", "params": {"epochs": 3},
                                "resources": {"cpus": 1, "memory": "1Gi"}})
        final = eventually(lambda: (s := client.status(job_id))["state"] in (
            "SUCCEEDED", "FAILED", "CANCELLED") and s, 180, what="the job done")
        assert final["state"] == "SUCCEEDED" and final["node"] == "far-1", final
        # what the far node stored is in the fleet's S3, read here with the operator's keys
        from fleet.statefile import with_recorded_storage

        store = open_storage(with_recorded_storage(Settings(home=home)))
        keys = [o.key for o in store.list(job_prefix(job_id))]
        assert any(k.endswith("/MANIFEST.json") and "/checkpoints/" in k for k in keys), keys
    finally:
        print(far_log.read_text(errors="replace")[-4000:] if far_log.exists() else "no far log")
