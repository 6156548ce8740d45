"""A producer's own code, sent with the job as a code bundle, on a real fleet.

The fleet runs with the default allowlist and no PYTHONPATH: the module lives in a folder of
the test's, outside the checkout, that only the bundle brings to the node.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.client import NOT_ACCEPTED, Client
from fleet.errors import SpecError
from fleet.store import keys
from tests.integration.support import Fleet, eventually

pytestmark = pytest.mark.integration

TRAIN = '''\
"""Linear regression by gradient descent, in numpy: a model the fleet has never seen."""
import json

import numpy as np

from mymodel.data import points


def train(ctx, steps=8, lr=0.5, step_seconds=0.0):
    x, y = points()
    w = np.zeros(2)
    start = 0
    found = ctx.restore()
    if found is not None:
        start, w = found[0], np.array(json.loads((found[1] / "w.json").read_text()))
    for step in range(start + 1, steps + 1):
        if step_seconds and ctx.wait(step_seconds):
            return {"stopped": step}
        pred = x @ w
        w = w - lr * 2 * x.T @ (pred - y) / len(y)
        loss = float(np.mean((x @ w - y) ** 2))
        ctx.checkpoint(step, lambda d, w=w: (d / "w.json").write_text(json.dumps(w.tolist())))
        ctx.report(step, loss=loss)
    print("trained", flush=True)
    return {"loss": loss, "w": w.tolist(), "resumed_from": start}
'''

DATA = '''\
import numpy as np


def points():
    x = np.stack([np.linspace(-1, 1, 64), np.ones(64)], axis=1)
    return x, x @ np.array([3.0, -1.0])
'''


def code_folder(root: Path, marker: str = "") -> Path:
    folder = root / "my-project"
    (folder / "mymodel").mkdir(parents=True)
    (folder / "mymodel" / "__init__.py").write_text(f"# {marker}\n")
    (folder / "mymodel" / "train.py").write_text(TRAIN)
    (folder / "mymodel" / "data.py").write_text(DATA)
    (folder / "notes.txt").write_text("not code\n")
    return folder


SPEC: dict[str, Any] = {"name": "mine", "entrypoint": "mymodel.train:train",
                        "resources": {"cpus": 1, "memory": "512Mi"}, "params": {"steps": 8}}


def test_a_folder_outside_the_checkout_trains_through_the_fleet(
        fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.settings.allowlist == ["workers.jobs"]
    folder = code_folder(tmp_path / "elsewhere")
    fleet.master()
    fleet.node("node-1")
    assert fleet.server.producer_url  # a producer's credential: it may only append and read
    producer = Client(fleet.settings, redis_url=fleet.server.producer_url)
    job = producer.submit(SPEC, code=folder)
    final = producer.wait(job, timeout=120)
    assert final["state"] == "SUCCEEDED", final
    assert final["result"]["loss"] < 0.1
    metrics = producer.metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["metrics"]["loss"] < metrics[0]["metrics"]["loss"]
    stored = list(fleet.r.scan_iter(match=keys.bundle("*")))
    assert len(stored) == 1
    with pytest.raises(redis.exceptions.NoPermissionError):  # only the master writes them
        redis.Redis.from_url(fleet.server.producer_url).set(stored[0], b"x")

    sent: list[str] = []  # the same folder again, from another Client: no bundle entry
    again = Client(fleet.settings, redis_url=fleet.server.producer_url)
    append = again.store.intake_append
    again.store.intake_append = lambda name, fields, cap: (  # type: ignore[method-assign]
        sent.append(str(fields["op"])), append(name, fields, cap))[1]
    second = again.submit(SPEC, code=folder)
    assert sent == ["submit"]
    assert again.wait(second, timeout=120)["state"] == "SUCCEEDED"

    spec_file = tmp_path / "mine.yaml"  # the command line, as a user types it
    spec_file.write_text("name: mine\nentrypoint: mymodel.train:train\n"
                         "resources: {cpus: 1, memory: 512Mi}\n")
    done = fleet.cli("submit", str(spec_file), "--code", str(folder), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout


def test_a_bundle_job_on_a_killed_node_resumes_elsewhere_from_its_checkpoint(
        fleet: Fleet, tmp_path: Path) -> None:
    folder = code_folder(tmp_path / "elsewhere")
    fleet.master()
    fleet.node("node-1", cores=[0])
    fleet.node("node-2", cores=[1])
    job = fleet.client.submit({**SPEC, "params": {"steps": 12, "step_seconds": 0.4}}, code=folder)
    eventually(lambda: ((fleet.client.status(job).get("progress") or {}).get("step") or 0) >= 4,
               30, what="4 steps done")
    victim = fleet.client.status(job)["node"]
    fleet.kill(fleet.nodes[victim])
    final = fleet.wait_job(job, 90)
    assert final["state"] == "SUCCEEDED", final
    attempts = final["attempts"]
    assert [a["end_reason"] for a in attempts] == ["NODE_LOST", "SUCCEEDED"]
    assert attempts[1]["node"] != victim
    assert final["result"]["resumed_from"] >= 4
    assert final["result"]["loss"] < 0.1


def test_a_tampered_bundle_is_rejected_not_run(fleet: Fleet, tmp_path: Path) -> None:
    folder = code_folder(tmp_path / "elsewhere", marker="tampered")
    fleet.master()
    job = fleet.client.submit(SPEC, code=folder)  # no node yet: the job waits, stored
    stored = eventually(lambda: list(fleet.r.scan_iter(match=keys.bundle("*"))), 30,
                        what="the bundle to be stored")
    eventually(lambda: fleet.client.status(job)["waiting"] != NOT_ACCEPTED, 30,
               what="the job to be accepted")
    data = fleet.r.get(stored[0])
    assert data is not None
    fleet.r.set(stored[0], data.replace(b"trained", b"hacked!"))  # the operator's key
    fleet.node("node-1")
    final = fleet.wait_job(job, 60)
    assert (final["state"], final["reason"]) == ("FAILED", "REJECTED"), final
    assert "digest mismatch" in final["error"]
    assert len(final["attempts"]) == 1  # not retried
    assert fleet.client.metrics(job) == []  # nothing ran
    digest = stored[0].decode().rsplit(":", 1)[1]
    assert hashlib.sha256(data).hexdigest() == digest


def test_a_bundle_key_written_over_with_garbage_rejects_its_job(fleet: Fleet) -> None:
    digest = hashlib.sha256(b"never packed").hexdigest()
    fleet.r.hset(keys.bundle(digest), "not", "a bundle")  # the operator's key, of another type
    fleet.master()
    fleet.node("node-1")
    job = fleet.client.submit({**SPEC, "bundle": f"sha256:{digest}"})
    final = fleet.wait_job(job, 60)
    assert (final["state"], final["reason"]) == ("FAILED", "REJECTED"), final
    assert "unreadable in the fleet's store" in final["error"]
    assert fleet.client.nodes()[0]["node"] == "node-1"  # the node serves on


def test_a_module_not_in_the_folder_is_refused_at_submit(fleet: Fleet, tmp_path: Path) -> None:
    folder = code_folder(tmp_path / "elsewhere")
    with pytest.raises(SpecError) as err:
        fleet.client.submit({**SPEC, "entrypoint": "theirmodel:train"}, code=folder)
    assert str(err.value).count("\n") == 0
    assert "module 'theirmodel' is not in the code folder" in str(err.value)
    assert fleet.r.xlen(keys.intake(fleet.client.intake)) == 0
