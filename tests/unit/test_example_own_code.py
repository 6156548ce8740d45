"""examples/own-code: its spec loads with the folder as its code, the folder packs to what the
node needs, and the module trains, checkpoints and resumes where it stopped (called directly,
with a JobContext as a node gives one)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from fleet.bundles.pack import pack
from fleet.spec import load_spec
from workers.context import Allotment, JobContext

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "own-code"


def test_the_spec_sends_its_own_folder_and_needs_no_allowlist() -> None:
    spec = load_spec(FOLDER / "job.yaml", allowlist=[])
    assert spec.entrypoint == "mytrain:train" and spec.framework == "torch"
    assert spec.code is not None and Path(spec.code).resolve() == FOLDER.resolve()


def test_the_folder_packs_without_saved_models_or_plots(tmp_path: Path) -> None:
    folder = shutil.copytree(FOLDER, tmp_path / "mine")
    (folder / "job-1.png").write_bytes(b"a plot")  # what `fleet plot` leaves here
    (folder / "model.pt").write_bytes(b"a model")
    names = set(tarfile.open(fileobj=io.BytesIO(pack(folder).data)).getnames())
    assert {"mytrain.py", "job.yaml", "requirements.txt", "README.md"} <= names
    assert not {n for n in names if n.endswith((".png", ".pt", ".pyc"))}


def _module() -> ModuleType:
    found = importlib.util.spec_from_file_location("mytrain", FOLDER / "mytrain.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def _context(tmp_path: Path, attempt: int) -> JobContext:
    return JobContext(job_id="own-1", attempt=attempt, resources=Allotment(1, 2**30),
                      workdir=tmp_path / f"work-{attempt}", checkpoint_dir=tmp_path / "ckpt")


def test_it_learns_and_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    mytrain = _module()
    uninterrupted = _context(tmp_path / "whole", 1)
    whole = mytrain.train(uninterrupted, epochs=4, samples=256)
    losses = [e["metrics"]["loss"] for e in uninterrupted.events if e["type"] == "progress"]
    assert len(losses) == 4 and losses[-1] < losses[0] / 2
    first = _context(tmp_path / "cut", 1)
    assert mytrain.train(first, epochs=2, samples=256)["epochs"] == 2
    assert [e["step"] for e in first.events if e["type"] == "checkpoint"] == [1, 2]
    second = _context(tmp_path / "cut", 2)
    resumed = mytrain.train(second, epochs=4, samples=256)
    assert [e["step"] for e in second.events if e["type"] == "resumed"] == [2]
    assert [e["step"] for e in second.events if e["type"] == "progress"] == [3, 4]
    assert resumed == {**whole, "resumed_from": 2}
    import torch

    model = mytrain.make_model(32)
    model.load_state_dict(torch.load(second.output_dir / mytrain.MODEL_FILE, weights_only=True))
    x, y = mytrain.make_data(256, 0)
    with torch.no_grad():
        val_loss = torch.nn.MSELoss()(model(x[230:]), y[230:]).item()
    assert val_loss == pytest.approx(resumed["val_loss"])  # the model it trained, kept
