"""A job whose checkpoints weigh something, timing its own loop, for the checkpoint storage
tests: `steps` steps of `step_seconds`, a checkpoint of `mib` MiB of random bytes each step.
Its result says how long the loop took and how much of that was `ctx.checkpoint` (the local
save: the upload to the store is the supervisor's, beside the loop), and where it resumed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workers.context import JobContext


def heavy_steps(ctx: JobContext, steps: int = 20, mib: int = 16, step_seconds: float = 0.1,
                ) -> dict[str, Any]:
    found = ctx.restore()
    done = int((found[1] / "step").read_text()) if found is not None else 0
    blob = os.urandom(mib << 20)
    began, saving = time.monotonic(), 0.0
    for step in range(done + 1, steps + 1):
        if ctx.wait(step_seconds):
            break
        t = time.monotonic()
        ctx.checkpoint(step, lambda d, s=step: _write(d, s, blob))
        saving += time.monotonic() - t
        ctx.report(step)
    return {"loop_seconds": time.monotonic() - began, "checkpoint_seconds": saving,
            "resumed_from": done if found is not None else None}


def _write(directory: Path, step: int, blob: bytes) -> None:
    (directory / "step").write_text(str(step))
    (directory / "weights.bin").write_bytes(blob)
