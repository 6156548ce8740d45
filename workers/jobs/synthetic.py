"""Synthetic jobs: known load and known faults, for benchmarks and fault tests.

Each reports progress, honours a stop request between steps, and returns a small dict.
None imports a deep-learning framework.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from workers.context import JobContext

STATE_FILE = "state.json"
_REPORT_EVERY = 0.25  # seconds between progress reports of the time-based jobs


def noop(ctx: JobContext) -> dict[str, Any]:
    """Does nothing, at once: measures the fleet's own overhead per job."""
    ctx.report(1)
    return {}


def sleep(ctx: JobContext, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
    """Sleep `seconds` in `steps` equal steps, reporting each: occupies a slot, not a CPU."""
    steps = max(1, int(steps))
    for step in range(1, steps + 1):
        if ctx.wait(seconds / steps):
            return {"steps": step - 1, "stopped": True}
        ctx.report(step, progress=step / steps)
    return {"steps": steps}


def burn_cpu(ctx: JobContext, seconds: float = 1.0) -> dict[str, Any]:
    """Keep the CPUs given busy for `seconds`: float matrix products, which use as many BLAS
    threads as the job's thread settings allow (one core per thread)."""
    import numpy as np  # lazily: noop and sleep start without it

    rng = np.random.default_rng(0)
    a = rng.random((256, 256))
    b = rng.random((256, 256))
    start = time.monotonic()
    next_report = start + _REPORT_EVERY
    products = step = 0
    while (now := time.monotonic()) - start < seconds:
        a = a @ b
        a /= np.abs(a).max()  # keep the values finite
        products += 1
        if now >= next_report:
            step += 1
            ctx.report(step, elapsed=now - start, products=products)
            next_report = now + _REPORT_EVERY
            if ctx.should_stop():
                return {"products": products, "seconds": now - start, "stopped": True}
    elapsed = time.monotonic() - start
    ctx.report(step + 1, elapsed=elapsed, products=products)
    return {"products": products, "seconds": elapsed}


def hold_memory(
    ctx: JobContext, mib: float = 100, seconds: float = 1.0, chunk_mib: float = 64
) -> dict[str, Any]:
    """Allocate `mib` MiB in chunks, writing every page (so it is resident, not just
    reserved), then hold it for `seconds`. A memory-watchdog test sets `mib` above the limit."""
    import numpy as np

    chunk = max(1, int(chunk_mib * 2**20))
    total = int(mib * 2**20)
    held: list[Any] = []
    allocated = step = 0
    while allocated < total:
        size = min(chunk, total - allocated)
        block = np.empty(size, dtype=np.uint8)
        block.fill(1)  # touch every page
        held.append(block)
        allocated += size
        step += 1
        ctx.report(step, mib=allocated / 2**20)
        if ctx.should_stop():
            return {"mib": allocated / 2**20, "stopped": True}
    stopped = ctx.wait(seconds)
    ctx.report(step + 1, mib=allocated / 2**20)
    checksum = sum(int(block[-1]) for block in held)  # keep the blocks alive until here
    result: dict[str, Any] = {"mib": allocated / 2**20, "blocks": checksum}
    if stopped:
        result["stopped"] = True
    return result


def steps(
    ctx: JobContext,
    steps: int = 20,
    step_seconds: float = 0.5,
    fail_at: int | None = None,
    crash_at: int | None = None,
    every_attempt: bool = False,
) -> dict[str, Any]:
    """Count to `steps`, one checkpoint per step, resuming after the last checkpoint.

    Faults for tests: at step `fail_at` raise RuntimeError; at step `crash_at` SIGKILL this
    process (as an OOM kill or a lost node would). By default the faulty step is checkpointed
    first, so the fault happens once and a retried attempt resumes after it and finishes.
    With `every_attempt=True` the fault comes before the checkpoint, so every attempt dies at
    the same step (for tests of retry limits).
    """
    found = ctx.restore()
    done = 0
    if found is not None:
        done = int(json.loads((found[1] / STATE_FILE).read_text())["step"])
    resumed_from = done if found is not None else None
    for step in range(done + 1, steps + 1):
        if ctx.wait(step_seconds):
            return {"steps": done, "resumed_from": resumed_from, "stopped": True}
        if every_attempt:
            _fault(step, fail_at, crash_at)
        ctx.checkpoint(step, _state_writer(step, ctx.attempt))
        # the log is the job's own witness of when it really ran (chaos checks read it)
        print(f"step {step} attempt {ctx.attempt} at {time.time():.3f}", flush=True)
        ctx.report(step, progress=step / steps)
        done = step
        if not every_attempt:
            _fault(step, fail_at, crash_at)
    print(f"done attempt {ctx.attempt} at {time.time():.3f}", flush=True)
    return {"steps": done, "resumed_from": resumed_from}


def print_lines(
    ctx: JobContext, lines: int = 10, interval: float = 0.2, width: int = 0
) -> dict[str, Any]:
    """Print `lines` numbered lines to stdout, `interval` seconds apart: the job's log.

    Each line is padded with spaces to `width` characters. With `interval=0` the lines go out
    as fast as Python can make them, in blocks, progress reported every quarter second: an
    output-throughput load (8,388,608 lines of width 127 are 1 GiB).
    """
    if interval <= 0:
        return _print_fast(ctx, lines, width)
    for i in range(1, lines + 1):
        print(f"line {i} of {lines}".ljust(width), flush=True)
        ctx.report(i)
        if i < lines and ctx.wait(interval):
            return {"lines": i, "stopped": True}
    return {"lines": lines}


def _print_fast(ctx: JobContext, lines: int, width: int, block: int = 4096) -> dict[str, Any]:
    next_report = time.monotonic() + _REPORT_EVERY
    for first in range(1, lines + 1, block):
        last = min(first + block - 1, lines)
        sys.stdout.write("\n".join(f"line {i} of {lines}".ljust(width)
                                   for i in range(first, last + 1)) + "\n")
        if (now := time.monotonic()) >= next_report:
            next_report = now + _REPORT_EVERY
            ctx.report(last)
            if ctx.should_stop():
                sys.stdout.flush()
                return {"lines": last, "stopped": True}
    sys.stdout.flush()
    ctx.report(lines)
    return {"lines": lines}


def write_file(ctx: JobContext, mib: float = 1.0, chunk_mib: float = 1.0) -> dict[str, Any]:
    """Write `mib` MiB of zeros to `fill.bin` in the job's own folder, a chunk a step: disk
    load, and a job that fills its node's disk (tests of disk errors)."""
    chunk = b"\0" * max(1, int(chunk_mib * 2**20))
    total, written, step = int(mib * 2**20), 0, 0
    with (ctx.workdir / "fill.bin").open("wb") as f:
        while written < total:
            written += f.write(chunk[: total - written])
            f.flush()
            step += 1
            ctx.report(step, mib=written / 2**20)
    return {"mib": written / 2**20}


def fail(ctx: JobContext, message: str = "boom") -> dict[str, Any]:
    """Fail at once with RuntimeError(message): a job whose error must reach the user."""
    ctx.report(1)
    raise RuntimeError(message)


def _state_writer(step: int, attempt: int) -> Any:
    def write(directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps({"step": step, "attempt": attempt}))

    return write


def _fault(step: int, fail_at: int | None, crash_at: int | None) -> None:
    if fail_at is not None and step == fail_at:
        raise RuntimeError(f"injected failure at step {step}")
    if crash_at is not None and step == crash_at:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
