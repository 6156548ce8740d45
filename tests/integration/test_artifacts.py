"""Artifacts out, on a real fleet: what a job writes to `ctx.output_dir` is downloaded by
`fleet artifacts` and `Client.artifacts`, the winning attempt's output only."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from fleet.artifacts import output_dir
from fleet.client import Client
from tests.integration.support import Fleet

pytestmark = pytest.mark.integration

TRAIN = '''\
import json


def train(ctx, fail_first=False):
    out = ctx.output_dir
    (out / "model.bin").write_bytes(bytes(range(256)) * 64 + b"attempt %d" % ctx.attempt)
    (out / "metrics").mkdir()
    (out / "metrics" / "final.json").write_text(json.dumps({"attempt": ctx.attempt}))
    if fail_first and ctx.attempt == 1:
        (out / "only-attempt-1.txt").write_text("from a failed attempt")
        raise RuntimeError("the first attempt fails")
    ctx.report(1, loss=0.5)
    return {"attempt": ctx.attempt}
'''
SPEC: dict[str, Any] = {"name": "keeper", "entrypoint": "mymodel.train:train",
                        "resources": {"cpus": 1, "memory": "256Mi"}}


def model_bytes(attempt: int) -> bytes:
    return bytes(range(256)) * 64 + b"attempt %d" % attempt


def code_folder(root: Path) -> Path:
    folder = root / "project"
    (folder / "mymodel").mkdir(parents=True)
    (folder / "mymodel" / "__init__.py").write_text("")
    (folder / "mymodel" / "train.py").write_text(TRAIN)
    return folder


def test_a_jobs_output_is_downloaded_by_the_cli_and_the_client(
        fleet: Fleet, tmp_path: Path) -> None:
    fleet.master()
    fleet.node("node-1")
    producer = Client(fleet.settings, redis_url=fleet.server.producer_url or fleet.server.url)
    job = producer.submit(SPEC, code=code_folder(tmp_path))
    final = producer.wait(job, timeout=120)
    assert final["state"] == "SUCCEEDED", final
    kept = output_dir(fleet.settings.artifacts_dir, job, 1)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o700  # the job's own, like its checkpoints

    done = fleet.cli("artifacts", job, "-o", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'cli'}: 2 files (16Ki) of {job}, attempt 1"
    assert (tmp_path / "cli" / "model.bin").read_bytes() == model_bytes(1)
    assert (tmp_path / "cli" / "metrics" / "final.json").read_text() == '{"attempt": 1}'

    got = producer.artifacts(job, tmp_path / "api")
    assert sorted(p.relative_to(tmp_path / "api").as_posix() for p in got.paths) == [
        "metrics/final.json", "model.bin"]
    assert (tmp_path / "api" / "model.bin").read_bytes() == model_bytes(1)

    again = fleet.cli("artifacts", job, "-o", str(tmp_path / "cli"))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "exists and is not empty" in again.stderr
    unknown = fleet.cli("artifacts", "no-such-job", "-o", str(tmp_path / "x"))
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr
    assert not (tmp_path / "x").exists()


def test_a_retried_job_gives_the_winning_attempts_output_only(
        fleet: Fleet, tmp_path: Path) -> None:
    fleet.master()
    fleet.node("node-1")
    spec = {**SPEC, "params": {"fail_first": True}, "max_retries": 1}
    job = fleet.client.submit(spec, code=code_folder(tmp_path))
    final = fleet.wait_job(job, 120)
    assert final["state"] == "SUCCEEDED", final
    assert [a["end_reason"] for a in final["attempts"]] == ["ERROR", "SUCCEEDED"]

    done = fleet.cli("artifacts", job, "-o", str(tmp_path / "won"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "won").rglob("*")) == [
        "final.json", "metrics", "model.bin"]
    assert (tmp_path / "won" / "model.bin").read_bytes() == model_bytes(2)
    assert (tmp_path / "won" / "metrics" / "final.json").read_text() == '{"attempt": 2}'

    first = fleet.cli("artifacts", job, "--attempt", "1", "-o", str(tmp_path / "first"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "first" / "only-attempt-1.txt").read_text() == "from a failed attempt"
    assert (tmp_path / "first" / "model.bin").read_bytes() == model_bytes(1)
