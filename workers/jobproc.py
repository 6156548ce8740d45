"""The job process: one per attempt, started by the supervisor as `python -m workers.jobproc`.

It reads its instructions (JSON) from stdin, pins itself to the cores it was given, sets thread
counts before any framework is imported, checks the entry point against the allowlist once more,
and calls `function(ctx, **params)`. Events (progress, checkpoints, the result) go to the
supervisor as JSON lines on the pipe named by FLEET_EVENT_FD; stdout and stderr are the job's
log. It dies with its supervisor: a SIGKILLed worker leaves no orphan training on.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

EVENT_FD_ENV = "FLEET_EVENT_FD"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # also covers a parent that died before prctl took effect
        while True:
            if os.getppid() != parent:
                os._exit(137)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main() -> int:
    _die_with_parent()
    order: dict[str, Any] = json.loads(sys.stdin.read())
    out = os.fdopen(int(os.environ[EVENT_FD_ENV]), "w", buffering=1)
    lock = threading.Lock()

    def emit(event: dict) -> None:
        line = json.dumps(event, default=float)
        with lock:
            out.write(line + "\n")

    from fleet.entrypoints import check_entrypoint
    from workers import runners
    from workers.context import JobContext, Resources

    res = order["resources"]
    resources = Resources(
        cpus=float(res["cpus"]), memory=int(res["memory"]), gpus=int(res.get("gpus", 0)),
        cpuset=tuple(res.get("cpuset", ())), gpu_ids=tuple(res.get("gpu_ids", ())),
    )
    if resources.cpuset:
        os.sched_setaffinity(0, resources.cpuset)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a polite stop: drain or cancel
    try:
        module_name, func_name = check_entrypoint(order["entrypoint"], order["allowlist"])
        runners.prepare(order["framework"], resources)
        function = getattr(importlib.import_module(module_name), func_name)
        ctx = JobContext(
            job_id=order["job_id"], attempt=int(order["attempt"]), resources=resources,
            workdir=Path(order["workdir"]), checkpoint_dir=Path(order["checkpoint_dir"]),
            emit=emit, stop=stop,
        )
        result = function(ctx, **order.get("params", {})) or {}
        emit({"type": "result", "result": json.loads(json.dumps(result, default=float))})
        return 0
    except BaseException as exc:  # noqa: BLE001 - any failure of the job is its outcome
        traceback.print_exc()
        emit({"type": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
