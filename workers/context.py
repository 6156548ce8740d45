"""What a job sees of the world: `JobContext`, passed as the first argument of every job.

A job is `function(ctx, **params) -> dict`. Through `ctx` it reports progress, logs, saves and
restores checkpoints, learns the resources it was given, and asks whether it should stop.
Everything it emits is a small JSON-safe dict: the job process forwards events to the
supervisor as JSON lines, so nothing else crosses the process boundary.

Event shapes (every event also carries "time", seconds since the epoch):

    {"type": "progress", "step": 3, "metrics": {"loss": 0.21, "accuracy": 0.95}}
    {"type": "log", "message": "..."}
    {"type": "checkpoint", "step": 3}
    {"type": "resumed", "step": 3}

Under a node's supervisor, checkpoints are the attempt's own (`checkpoint_dir` is its folder)
until the supervisor commits one with the attempt's fencing token (`checkpoint` event → a
fenced Redis step), and `restore()` resumes only from committed ones (`restore_from`): what a
superseded attempt wrote is never resumed from. Every call into the context first checks the
node's lease (`fence`): past it, the job's process group ends at once.

What a job writes under `ctx.output_dir` (its attempt's own folder, 0700) is kept with the job:
`fleet artifacts JOB` downloads the output of the attempt that succeeded (fleet.artifacts).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.resources import Resources
from workers import checkpoint as checkpoints
from workers.attempt.fence import Fence

Event = dict[str, Any]


@dataclass(frozen=True)
class Allotment:
    """What a job was given on its node: its share, not the node's or the host's, and the
    CPUs and GPUs it was pinned to (the amounts are those of `fleet.resources.Resources`)."""

    cpus: float
    memory: int  # bytes
    gpus: int = 0
    cpuset: tuple[int, ...] = ()  # the CPUs the job is pinned to; empty: not pinned
    gpu_ids: tuple[int, ...] = ()  # device indices, exported as CUDA_VISIBLE_DEVICES

    @classmethod
    def from_order(cls, order: Mapping[str, Any]) -> Allotment:
        """From an attempt's order: the spec's `resources` plus `cpuset` and `gpu_ids`."""
        given = Resources.parse(order)
        return cls(cpus=given.get("cpus"), memory=int(given.get("memory")),
                   gpus=int(given.get("gpus")), cpuset=tuple(order.get("cpuset", ())),
                   gpu_ids=tuple(order.get("gpu_ids", ())))

    @property
    def threads(self) -> int:
        """Compute threads a framework should use: whole CPUs given, at least one, and never
        more than the CPUs the job is pinned to (more threads than cores only thrash)."""
        threads = max(1, math.floor(self.cpus))
        if self.cpuset:
            threads = min(threads, len(self.cpuset))
        return threads


class JobContext:
    """One attempt of one job.

    `emit` receives each event dict; the job process passes a function that writes it as a JSON
    line to the supervisor. With `emit=None` events are kept in `self.events`, for direct calls
    and tests. `stop` is set by the job process when the job is cancelled or its node drains;
    a job checks `should_stop()` between steps, saves a checkpoint and returns early.
    """

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        resources: Allotment,
        workdir: Path,
        checkpoint_dir: Path,
        emit: Callable[[Event], None] | None = None,
        stop: threading.Event | None = None,
        fence: Fence | None = None,
        restore_from: Sequence[tuple[int, Path]] | None = None,
        output_dir: Path | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.resources = resources
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.output_dir = Path(output_dir) if output_dir is not None else self.workdir / "output"
        checkpoints.make_private_dir(self.output_dir)
        self.events: list[Event] = []
        self._emit = emit if emit is not None else self.events.append
        self._stop = stop if stop is not None else threading.Event()
        self._lock = threading.Lock()  # a framework callback may report from another thread
        self._fence = fence
        # committed checkpoints, newest first; None: a direct run, any valid one of our own
        self._restore_from = None if restore_from is None else list(restore_from)

    def report(self, step: int, **metrics: float) -> None:
        """Progress at `step` with named metrics. Metrics must be finite numbers: numpy and
        torch scalars are converted with float(); NaN, inf or a non-number raises ValueError
        (JSON has no NaN, and a NaN loss is a bug the job should see, not hide)."""
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"metric {name!r} must be a number, got {type(value).__name__}"
                ) from None
            if not math.isfinite(number):
                raise ValueError(f"metric {name!r} is {number}; report finite numbers only")
            clean[name] = number
        self._check_lease()
        self._send({"type": "progress", "step": int(step), "metrics": clean})

    def log(self, message: str) -> None:
        self._send({"type": "log", "message": str(message)})

    def should_stop(self) -> bool:
        """True once a cancel or a drain was asked: checkpoint, then return early."""
        self._check_lease()
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once when a stop is asked. Returns should_stop()."""
        stopped = self._stop.wait(max(0.0, seconds))
        self._check_lease()
        return stopped

    def checkpoint(self, step: int, write: Callable[[Path], None]) -> Path:
        """Save a checkpoint for `step`: `write(directory)` puts files in a fresh directory,
        which is sealed and published atomically (see workers.checkpoint). Under a supervisor
        it is this attempt's until committed; pruning is the supervisor's then."""
        self._check_lease()
        keep = checkpoints.KEEP if self._restore_from is None else None
        path = checkpoints.save(self.checkpoint_dir, step, write, keep=keep)
        self._check_lease()
        self._send({"type": "checkpoint", "step": step})
        return path

    def restore(self) -> tuple[int, Path] | None:
        """The checkpoint to resume from as (step, directory), or None when there is none:
        the newest committed one that verifies (a direct run: the newest valid one)."""
        self._check_lease()
        if self._restore_from is None:
            found = checkpoints.latest(self.checkpoint_dir)
        else:
            found = next(((step, directory) for step, directory in self._restore_from
                          if not directory.is_symlink() and checkpoints.verify(directory, step)),
                         None)
        if found is not None:
            self._send({"type": "resumed", "step": found[0]})
        return found

    def _check_lease(self) -> None:
        if self._fence is not None:
            self._fence.check()

    def _send(self, event: Event) -> None:
        event["time"] = time.time()
        with self._lock:
            self._emit(event)
