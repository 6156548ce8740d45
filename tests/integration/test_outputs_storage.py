"""Logs and outputs in the real embedded S3 (SeaweedFS): a job's log reaches the store in
chunks and its outputs as a set; with the node's artifacts folder gone, `fleet logs` and
`fleet artifacts` still read them there; S3 stopped while a job prints fails nothing and the
log is whole in S3 once it is back."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.drivers.redis_server import RedisServer
from fleet.drivers.s3_server import S3Server
from fleet.observe.logs import LOG_LINES_CAP
from fleet.settings import Settings
from fleet.storage import StorageUnavailable, layout
from fleet.storage.manifest import read_set
from fleet.storage.s3 import S3Storage
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration

JOB_CODE = '''\
import time


def run(ctx, lines=10, interval=0.0):
    for i in range(1, lines + 1):
        print(f"line {i:06d}", flush=True)
        if interval:
            time.sleep(interval)
    (ctx.output_dir / "model.bin").write_bytes(bytes(range(256)) * 512)
    (ctx.output_dir / "eval").mkdir()
    (ctx.output_dir / "eval" / "scores.json").write_text('{"acc": 0.9}')
    return {"printed": lines}
'''


def spec(lines: int, interval: float = 0.0) -> dict[str, Any]:
    return {"name": "printer", "entrypoint": "printer.job:run",
            "resources": {"cpus": 1, "memory": "256Mi"},
            "params": {"lines": lines, "interval": interval}}


def expected(lines: int) -> str:
    return "".join(f"line {i:06d}\n" for i in range(1, lines + 1))


def code(root: Path) -> Path:
    folder = root / "project"
    (folder / "printer").mkdir(parents=True)
    (folder / "printer" / "__init__.py").write_text("")
    (folder / "printer" / "job.py").write_text(JOB_CODE)
    return folder


def shipped(store: S3Storage, job: str, attempt: int = 1) -> str:
    """The attempt's log as its chunks in S3 hold it, each checked to start where the last
    ended."""
    out = b""
    for o in store.list(f"{layout.attempt_prefix(job, attempt)}log/"):
        assert int(o.key.rpartition("/")[2]) == len(out), o.key
        out += store.get_bytes(o.key)
    return out.decode()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A server of this module's own: one test stops and starts it."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "s3").start()
    yield server
    server.stop()


@pytest.fixture
def s3_fleet(tmp_path: Path, redis_server: RedisServer, s3: S3Server) -> Iterator[Fleet]:
    prefix = f"t-{secrets.token_hex(4)}"  # keys of this test only
    settings = Settings(
        home=tmp_path / "home", redis_url=redis_server.url, heartbeat_interval=0.5,
        heartbeat_ttl=3.0, storage=f"s3://{s3.bucket}/{prefix}", s3_endpoint=s3.endpoint,
        s3_credentials_file=s3.credentials_file)
    f = Fleet(settings, redis_server)
    yield f
    f.stop()
    print(f.log_tails())


def store_of(fleet: Fleet) -> S3Storage:
    store = fleet.client.fleet.storage()
    assert isinstance(store, S3Storage)
    return store


def test_logs_and_outputs_are_in_s3_and_read_there_once_the_nodes_folder_is_gone(
        s3_fleet: Fleet, tmp_path: Path) -> None:
    fleet = s3_fleet
    fleet.master()
    fleet.node("node-1")
    lines = LOG_LINES_CAP + 3000  # more than Redis keeps: `fleet logs` must read S3
    job = fleet.client.submit(spec(lines), code=code(tmp_path))
    final = fleet.wait_job(job, 180)
    assert final["state"] == "SUCCEEDED", final
    attempt = final["attempts"][0]
    assert "storage_error" not in attempt, attempt
    store = store_of(fleet)
    assert shipped(store, job) == expected(lines)
    found = read_set(store, layout.output_prefix(job, 1))
    assert found is not None and found["files"] == {"model.bin": 256 * 512,
                                                    "eval/scores.json": 12}

    shutil.rmtree(fleet.settings.artifacts_dir / "jobs")  # the node's host is gone

    shown = fleet.cli("logs", job)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == expected(lines)
    assert fleet.client.log_lines(job, 1)[-1] == f"line {lines:06d}"
    listed = fleet.cli("artifacts", job, "--list")
    assert listed.returncode == 0, listed.stderr
    assert [row.split()[-1] for row in listed.stdout.splitlines()] == ["eval/scores.json",
                                                                       "model.bin"]
    got = fleet.client.artifacts(job, tmp_path / "dl")
    assert (tmp_path / "dl" / "model.bin").read_bytes() == bytes(range(256)) * 512
    assert (tmp_path / "dl" / "eval" / "scores.json").read_text() == '{"acc": 0.9}'
    assert got.size == 256 * 512 + 12
    followed = fleet.cli("logs", "-f", job)
    assert followed.returncode == 0 and followed.stdout == expected(lines)


def test_s3_stopped_while_the_job_prints_fails_nothing_and_the_log_is_whole_after(
        s3_fleet: Fleet, s3: S3Server, tmp_path: Path) -> None:
    fleet = s3_fleet
    fleet.master()
    fleet.node("node-1")
    lines = 300
    job = fleet.client.submit(spec(lines, interval=0.05), code=code(tmp_path))  # ~15 s
    store = store_of(fleet)
    eventually(lambda: shipped(store, job), 60, what="the first chunk in S3")
    s3.stop()
    try:
        with pytest.raises(StorageUnavailable):
            store.get_bytes("probe")
        time.sleep(6)  # the job prints on; its node cannot send
    finally:
        s3.start()
    final = fleet.wait_job(job, 120)
    assert final["state"] == "SUCCEEDED", final
    eventually(lambda: shipped(store, job) == expected(lines), 60,
               what="the whole log in S3 after it came back")
    assert read_set(store, layout.output_prefix(job, 1)) is not None
    assert fleet.client.log_lines(job, 1) == expected(lines).splitlines()
    node_log = "".join(p.read_text() for p in fleet.driver.logs.glob("*.log"))
    assert "not sent to the store (kept on disk, retried)" in node_log  # the outage was felt
    assert "reaches the store again" in node_log


def test_fleet_logs_f_follows_a_job_printing_past_redis_cap_on_through_s3(
        s3_fleet: Fleet, tmp_path: Path) -> None:
    """Redis keeps the last LOG_LINES_CAP lines: a follower of a job printing more goes on in
    S3's chunks once the list is full, and shows every line once, in order."""
    fleet = s3_fleet
    fleet.master()
    fleet.node("node-1")
    lines = LOG_LINES_CAP + 3000
    job = fleet.client.submit(spec(lines, interval=0.001), code=code(tmp_path))
    fleet.wait_state(job, "RUNNING")
    followed = fleet.cli("logs", "-f", job)
    assert followed.returncode == 0, followed.stderr
    assert fleet.client.status(job)["state"] == "SUCCEEDED"
    assert followed.stdout == expected(lines)
