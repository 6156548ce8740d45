"""examples/own-code as a new user runs it: the folder copied somewhere outside the checkout, a
fleet started with plain `fleet up` (no FLEET_ALLOWLIST, no PYTHONPATH naming the folder, no
restart), and the job sent with `fleet submit job.yaml --code DIR --wait`; its progress, logs,
checkpoints and trained model (`fleet artifacts`) are there. Then its node is killed with
SIGKILL mid-run, and the job finishes on the other node from its checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client import Client
from fleet.settings import Settings
from fleet.statefile import read_state
from tests.integration.support import EXAMPLES, eventually

pytestmark = pytest.mark.integration

pytest.importorskip("torch")  # the example is a torch model; the nodes need torch


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: no FLEET_* setting but the fleet's home (a folder of
    the test's), and nothing on PYTHONPATH but what runs `fleet` itself from this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return {**env, "FLEET_HOME": str(home)}


def run(home: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", *args], env=user_env(home), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


class UserFleet:
    def __init__(self, home: Path, folder: Path) -> None:
        self.home = home
        self.folder = folder
        self.client = Client(Settings(home=home))

    def fleet(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`fleet ARGS`, typed in the user's code folder."""
        return run(self.home, *args, cwd=self.folder, timeout=timeout)

    def node_pids(self) -> dict[str, int]:
        return dict((read_state(Settings(home=self.home)) or {})["pids"]["nodes"])


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserFleet]:
    root = tmp_path_factory.mktemp("own-code")
    folder = shutil.copytree(EXAMPLES / "own-code", root / "my-model")
    home = root / "home"
    assert not any(str(folder) in p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep))
    up = run(home, "up", "--detach", "--workers", "2", "--memory", "2Gi", "--no-flower",
             cwd=root)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield UserFleet(home, folder)
    finally:
        down = run(home, "down", cwd=root, timeout=120)
        print(down.stdout, down.stderr)
        for log in sorted((home / "logs").glob("*.log")):
            print(f"===== {log.name} =====")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


def test_the_example_trains_from_its_folder_with_one_command(user: UserFleet) -> None:
    done = user.fleet("submit", "job.yaml", "--code", str(user.folder), "--wait",
                      "--set", "params.epochs=6")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout
    job = done.stdout.split("submitted ", 1)[1].split()[0]

    status = json.loads(user.fleet("status", job, "--json").stdout)
    assert status["state"] == "SUCCEEDED" and status["progress"]["step"] == 6, status
    assert status["result"]["epochs"] == 6 and status["result"]["resumed_from"] is None
    metrics = user.client.metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert metrics[-1]["metrics"]["loss"] < metrics[0]["metrics"]["loss"] / 2  # it learns
    logs = user.fleet("logs", job).stdout
    assert "epoch 1/6 loss" in logs and "epoch 6/6 loss" in logs, logs
    committed = user.client.store.committed_checkpoints(job)
    assert committed and committed[0]["step"] == 6, committed
    assert_model_kept(user, job, status["result"])


def assert_model_kept(user: UserFleet, job: str, result: dict[str, Any]) -> None:
    """`fleet artifacts` gives the weights the job trained: the validation loss it reported."""
    import torch

    out = user.home.parent / f"out-{job}"
    got = user.fleet("artifacts", job, "-o", str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    found = importlib.util.spec_from_file_location("mytrain", user.folder / "mytrain.py")
    assert found is not None and found.loader is not None
    mytrain = importlib.util.module_from_spec(found)
    found.loader.exec_module(mytrain)
    model = mytrain.make_model(32)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x, y = mytrain.make_data(2048, 0)
    with torch.no_grad():
        val_loss = torch.nn.MSELoss()(model(x[1843:]), y[1843:]).item()
    assert val_loss == pytest.approx(result["val_loss"], rel=1e-5)


def test_its_node_killed_mid_run_it_resumes_on_the_other_from_its_checkpoint(
        user: UserFleet) -> None:
    sent = user.fleet("submit", "job.yaml", "--set", "params.epochs=14",  # code: . in the spec
                      "--set", "params.epoch_pause=0.5")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job = sent.stdout.strip()

    def checkpointed() -> int:
        found = user.client.store.committed_checkpoints(job)
        return int(found[0]["step"]) if found else 0

    eventually(lambda: checkpointed() >= 3, 120, what="3 epochs checkpointed")
    victim = user.client.status(job)["node"]
    pids = user.node_pids()
    os.kill(pids[victim], signal.SIGKILL)
    at_kill = checkpointed()

    final: dict[str, Any] = user.client.wait(job, timeout=180)
    assert final["state"] == "SUCCEEDED", final
    attempts = final["attempts"]
    assert [a["end_reason"] for a in attempts] == ["NODE_LOST", "SUCCEEDED"], attempts
    assert attempts[1]["node"] != victim and attempts[1]["node"] in pids
    assert attempts[1]["resumed_from_step"] >= at_kill > 0, attempts
    assert final["result"]["resumed_from"] == attempts[1]["resumed_from_step"]
    assert final["result"]["epochs"] == 14
    resumed = user.fleet("logs", job, "--attempt", "2").stdout
    assert f"resuming after epoch {attempts[1]['resumed_from_step']}" in resumed, resumed
    assert "epoch 1/14 " not in resumed  # the second attempt did not start over
    assert_model_kept(user, job, final["result"])  # the output of the attempt that succeeded
