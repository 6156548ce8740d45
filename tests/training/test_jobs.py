"""Built-in jobs, called directly with a JobContext: they learn, report, checkpoint, resume.

torch and TensorFlow share this process: importing both, in either order, was checked to work.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from workers import checkpoint, runners
from workers.context import Allotment, JobContext
from workers.jobs import synthetic

pytestmark = pytest.mark.training

REPO = Path(__file__).resolve().parents[2]
DIGITS = ["workers.jobs.digits_torch", "workers.jobs.digits_tf"]


def _context(tmp_path: Path, emit=None, stop: threading.Event | None = None) -> JobContext:
    return JobContext(
        job_id="job-1",
        attempt=1,
        resources=Allotment(cpus=1, memory=2**30),
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "ckpt",
        emit=emit,
        stop=stop,
    )


def _events(ctx: JobContext, kind: str) -> list[dict]:
    return [e for e in ctx.events if e["type"] == kind]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    # As the job process would; keeps this 2-core machine responsive.
    runners.prepare("torch", Allotment(cpus=1, memory=2**30))


@pytest.fixture(params=DIGITS, ids=["torch", "tf"])
def digits(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def test_digits_reaches_90_percent_reporting_every_epoch(
    digits: ModuleType, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    result = digits.train(ctx)

    assert result["accuracy"] >= 0.90
    assert result["epochs"] == 12 and result["resumed_from"] is None
    assert "stopped" not in result
    json.dumps(result)  # only JSON crosses the process boundary
    progress = _events(ctx, "progress")
    assert [e["step"] for e in progress] == list(range(1, 13))
    assert all({"loss", "accuracy"} <= set(e["metrics"]) for e in progress)
    assert progress[-1]["metrics"]["loss"] < progress[0]["metrics"]["loss"]
    assert [e["step"] for e in _events(ctx, "checkpoint")] == list(range(1, 13))
    assert [step for step, _ in checkpoint.list_steps(ctx.checkpoint_dir)] == [11, 12]
    assert checkpoint.latest(ctx.checkpoint_dir)[0] == 12  # type: ignore[index]


def test_digits_resumes_after_the_last_checkpoint(digits: ModuleType, tmp_path: Path) -> None:
    first = _context(tmp_path)
    assert digits.train(first, epochs=3)["epochs"] == 3

    second = _context(tmp_path)
    result = digits.train(second, epochs=5)

    assert [e["step"] for e in _events(second, "resumed")] == [3]
    assert [e["step"] for e in _events(second, "progress")] == [4, 5]
    assert result["resumed_from"] == 3 and result["epochs"] == 5
    assert result["accuracy"] >= 0.85  # continued training, not restarted from random weights


def test_digits_stops_early_when_asked(digits: ModuleType, tmp_path: Path) -> None:
    stop = threading.Event()
    events: list[dict] = []

    def emit(event: dict) -> None:
        events.append(event)
        if event["type"] == "progress" and event["step"] == 2:
            stop.set()  # as a cancel arriving during epoch 2 would

    result = digits.train(_context(tmp_path, emit=emit, stop=stop), epochs=12)

    assert result["stopped"] is True and result["epochs"] == 2
    assert checkpoint.latest(tmp_path / "ckpt")[0] == 2  # type: ignore[index]


def test_digits_checkpoints_every_nth_epoch_and_never_loses_the_last(
    digits: ModuleType, tmp_path: Path
) -> None:
    full = _context(tmp_path / "full")
    assert digits.train(full, epochs=7, checkpoint_every=3)["epochs"] == 7
    assert [e["step"] for e in _events(full, "checkpoint")] == [3, 6, 7]  # 7: the last

    stop = threading.Event()

    def emit(event: dict) -> None:
        if event["type"] == "progress" and event["step"] == 4:
            stop.set()  # a cancel or drain between two checkpoints

    stopped = _context(tmp_path / "stopped", emit=emit, stop=stop)
    result = digits.train(stopped, epochs=12, checkpoint_every=3)
    assert result["stopped"] is True and result["epochs"] == 4
    assert checkpoint.latest(tmp_path / "stopped" / "ckpt")[0] == 4  # type: ignore[index]

    with pytest.raises(ValueError, match="checkpoint_every"):
        digits.train(_context(tmp_path / "bad"), checkpoint_every=0)


def test_digits_writes_its_trained_model_to_the_output_dir(
    digits: ModuleType, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    result = digits.train(ctx, epochs=3)
    saved = ctx.output_dir / digits.MODEL_FILE
    assert ctx.output_dir == tmp_path / "work" / "output" and saved.is_file()
    x, y = digits.load_split()["test"]
    if digits.__name__.endswith("torch"):
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        model.load_state_dict(torch.load(saved, weights_only=True))
        with torch.no_grad():
            predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    else:
        import keras

        predicted = keras.models.load_model(saved).predict(x, verbose=0).argmax(axis=1)
    assert abs(float((predicted == y).mean()) - result["accuracy"]) < 1e-6  # the same model


# -- synthetic jobs -------------------------------------------------------------------------


def test_noop_sleep_burn_and_hold_report_progress(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert synthetic.noop(ctx) == {}
    assert synthetic.sleep(ctx, seconds=0.1, steps=3) == {"steps": 3}
    assert synthetic.burn_cpu(ctx, seconds=0.3)["products"] > 0
    held = synthetic.hold_memory(ctx, mib=20, seconds=0.05, chunk_mib=8)
    assert held["mib"] == 20 and held["blocks"] == 3
    assert len(_events(ctx, "progress")) >= 1 + 3 + 1 + 3


def test_sleep_returns_early_on_stop(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    assert synthetic.sleep(_context(tmp_path, stop=stop), seconds=30, steps=3) == {
        "steps": 0,
        "stopped": True,
    }


def test_steps_fails_once_then_resumes_after_the_fault(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="injected failure at step 2"):
        synthetic.steps(_context(tmp_path), steps=4, step_seconds=0, fail_at=2)

    retry = _context(tmp_path)
    result = synthetic.steps(retry, steps=4, step_seconds=0, fail_at=2)

    assert result == {"steps": 4, "resumed_from": 2}
    assert [e["step"] for e in _events(retry, "progress")] == [3, 4]


def test_steps_every_attempt_fails_before_checkpointing(tmp_path: Path) -> None:
    for _ in range(2):
        with pytest.raises(RuntimeError):
            synthetic.steps(
                _context(tmp_path), steps=4, step_seconds=0, fail_at=2, every_attempt=True
            )
    assert checkpoint.latest(tmp_path / "ckpt")[0] == 1  # type: ignore[index]


def test_steps_crash_kills_the_process_and_a_retry_resumes(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from workers.context import Allotment, JobContext;"
        "from workers.jobs import synthetic;"
        "ctx = JobContext(job_id='j', attempt=1, resources=Allotment(cpus=1, memory=1),"
        " workdir=Path(sys.argv[1]) / 'work', checkpoint_dir=Path(sys.argv[1]) / 'ckpt');"
        "synthetic.steps(ctx, steps=5, step_seconds=0, crash_at=3); print('not reached')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout

    result = synthetic.steps(_context(tmp_path), steps=5, step_seconds=0, crash_at=3)
    assert result == {"steps": 5, "resumed_from": 3}


def test_print_lines_writes_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.print_lines(_context(tmp_path), lines=3, interval=0) == {"lines": 3}
    assert capsys.readouterr().out.splitlines() == ["line 1 of 3", "line 2 of 3", "line 3 of 3"]


def test_fail_raises_its_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="^kaput$"):
        synthetic.fail(_context(tmp_path), message="kaput")


# -- runners ---------------------------------------------------------------------------------


def test_thread_env_caps_every_pool() -> None:
    env = runners.thread_env(3)
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
    ):
        assert env[name] == "3"
    assert env["TF_NUM_INTEROP_THREADS"] == "1"
    gpus = runners.job_env(Allotment(cpus=2, memory=1, gpus=2, gpu_ids=(1, 3)))
    assert gpus["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert runners.job_env(Allotment(cpus=2, memory=1))["CUDA_VISIBLE_DEVICES"] == ""


def test_torch_prepare_sets_threads() -> None:
    import torch

    runners.prepare("torch", Allotment(cpus=1, memory=1))
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="unknown framework"):
        runners.prepare("jax", Allotment(cpus=1, memory=1))


def test_job_modules_and_runners_import_no_framework() -> None:
    code = (
        "import sys, workers.context, workers.runners, workers.jobs.synthetic,"
        " workers.jobs.digits_torch, workers.jobs.digits_tf;"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
