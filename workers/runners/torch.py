"""PyTorch runner: thread settings, and checkpoints of a model and its optimizer.

Checkpoints hold only tensors and plain containers, saved with torch.save and loaded with
`torch.load(weights_only=True)`: loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from workers.context import Allotment, JobContext

STATE_FILE = "state.pt"
EXTRA_FILE = "extra.json"


def prepare(resources: Allotment) -> None:
    """Use exactly the CPUs given. Inter-op parallelism is set to 1 (a small job gains nothing
    from it); torch refuses that call once parallel work has started, hence the guard."""
    torch.set_num_threads(resources.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def save(
    ctx: JobContext,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Checkpoint `model` and `optimizer` after `step`; `extra` (JSON-safe) rides along."""

    def write(directory: Path) -> None:
        state: dict[str, Any] = {"step": step, "model": model.state_dict()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, directory / STATE_FILE)
        if extra is not None:
            (directory / EXTRA_FILE).write_text(json.dumps(extra))

    return ctx.checkpoint(step, write)


def restore(
    ctx: JobContext, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> int | None:
    """Load the newest valid checkpoint into `model` (and `optimizer`); returns its step, the
    last one completed, so the job resumes at step + 1. None when there is no checkpoint."""
    found = ctx.restore()
    if found is None:
        return None
    step, directory = found
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return step


def load_extra(ctx: JobContext) -> dict[str, Any] | None:
    """The `extra` dict of the newest valid checkpoint, if it was saved with one."""
    from workers import checkpoint

    found = checkpoint.latest(ctx.checkpoint_dir)
    if found is None or not (found[1] / EXTRA_FILE).is_file():
        return None
    data = json.loads((found[1] / EXTRA_FILE).read_text())
    return data if isinstance(data, dict) else None
