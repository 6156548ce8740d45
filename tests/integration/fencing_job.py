"""A job that keeps its own witness of when it ran, for the fencing tests.

One JSON line per step, appended to a file outside fleet (`log`) *after* the step's
`ctx.report`: attempt, step, wall time and host name (a second host in tests/hosts.py has its
own). A checkpoint every `checkpoint_every` steps records who wrote it, where and when, so a
test can tell which attempt's checkpoint, made on which host, a resumed one started from.
The test's settings put this module on the allowlist.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.context import JobContext

STATE_FILE = "state.json"


def witnessed_steps(
    ctx: JobContext, log: str, steps: int = 160, step_seconds: float = 0.25,
    checkpoint_every: int = 3,
) -> dict[str, Any]:
    found = ctx.restore()
    origin = json.loads((found[1] / STATE_FILE).read_text()) if found is not None else None
    done = int(origin["step"]) if origin else 0
    host = socket.gethostname()
    _append(log, {"event": "start", "attempt": ctx.attempt, "resumed": origin,
                  "time": time.time(), "host": host})
    for step in range(done + 1, steps + 1):
        if ctx.wait(step_seconds):
            return {"steps": step - 1, "stopped": True}
        ctx.report(step)
        _append(log, {"attempt": ctx.attempt, "step": step, "time": time.time(), "host": host})
        if step % checkpoint_every == 0:
            state = {"step": step, "attempt": ctx.attempt, "time": time.time(), "host": host}
            ctx.checkpoint(step, _writer(json.dumps(state)))
    _append(log, {"event": "done", "attempt": ctx.attempt, "time": time.time(), "host": host})
    return {"steps": steps, "resumed_from": origin}


def _writer(text: str) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        (directory / STATE_FILE).write_text(text)

    return write


def _append(log: str, record: dict[str, Any]) -> None:
    """One write(2) per line on an O_APPEND file: lines of two attempts never interleave."""
    fd = os.open(Path(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)
