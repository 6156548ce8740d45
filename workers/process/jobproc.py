"""The job process: one per attempt, forked by the node's fork server (`workers.process.forkserver`),
or started on its own as `python -m workers.process.jobproc`; the same `main` runs either way.

It reads its instructions (JSON) from stdin, pins itself to the cores it was given, sets thread
counts before any framework is imported, checks the entry point against the allowlist once more,
and calls `function(ctx, **params)`. Events (progress, checkpoints, the result) go to the
supervisor as JSON lines on the pipe named by FLEET_EVENT_FD; stdout and stderr are the job's
log. It dies with its supervisor: a SIGKILLed worker leaves no orphan training on, and with
its node's lease (`workers.attempt.fence`): a forked job checks the lease deadline in every call into
`ctx` and in a watchdog thread between them.

Packages: `env_site` names the site-packages of the job's env (its `requirements`, built by
`workers.attempt.environment`), put ahead of the node's own; the code root goes before both.

Checkpoints: the order names the attempt's own checkpoint folder (`checkpoint_dir`) and the
checkpoints its job committed so far (`restore`: [{"step", "dir"}], newest first), the only
ones `ctx.restore()` may resume from. An order without `restore` (a direct run) resumes from
the newest valid checkpoint in `checkpoint_dir`.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

EVENT_FD_ENV = "FLEET_EVENT_FD"
PARENT_ENV = "FLEET_JOB_PARENT"  # the pid this process must die with (set by the fork server)
_PR_SET_PDEATHSIG = 1


def preload() -> None:
    """What `main` loads, loaded ahead (by the fork server, so its children need not)."""
    from fleet import entrypoints  # noqa: F401
    from fleet.bundles import entry  # noqa: F401
    from workers import context, runners  # noqa: F401

    libc_prctl()


@functools.cache
def libc_prctl() -> Any:
    """libc's prctl(2), or None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent() -> None:
    """SIGKILL when the parent (the fork server, or whoever started this process) dies."""
    expected = os.environ.get(PARENT_ENV)
    parent = int(expected) if expected else os.getppid()
    prctl = libc_prctl()
    armed = prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(137)
    if armed:
        return

    def watch() -> None:  # where prctl is unavailable: look every half second
        while True:
            if os.getppid() != parent:
                os._exit(137)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def exit_now(code: int) -> NoReturn:
    """End the process as interpreter shutdown would, less tearing down every module (which
    costs ~15 ms, more than a no-op job): the job's non-daemon threads are waited for, atexit
    handlers run, output is flushed."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> int:
    _die_with_parent()
    from workers.attempt import fence

    guard = fence.installed()
    if guard is not None:
        guard.check()
        guard.watch()
    order: dict[str, Any] = json.loads(sys.stdin.read())
    out = os.fdopen(int(os.environ[EVENT_FD_ENV]), "w", buffering=1)
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        line = json.dumps(event, default=float)
        with lock:
            out.write(line + "\n")

    from fleet.bundles.entry import check_bundle_module, imported_from
    from fleet.entrypoints import check_entrypoint
    from workers import runners
    from workers.context import Allotment, JobContext

    resources = Allotment.from_order(order["resources"])
    if resources.cpuset:
        os.sched_setaffinity(0, resources.cpuset)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a polite stop: drain or cancel
    try:
        if order.get("env_site"):  # the job's requirements (workers.env), then the bundle first
            _layer_env(order["env_site"])
        code_root = order.get("code_root")
        if code_root:  # the producer's bundle: its modules need no allowlist, others do
            module_name, func_name = check_bundle_module(order["entrypoint"], Path(code_root))
            sys.path.insert(0, code_root)
        else:
            module_name, func_name = check_entrypoint(order["entrypoint"], order["allowlist"])
        runners.prepare(order["framework"], resources)
        module = importlib.import_module(module_name)
        if code_root and not imported_from(module, Path(code_root)):
            raise ImportError(f"{module_name} was not imported from the job's code bundle")
        function = _job_function(module, func_name)
        restore = order.get("restore")
        ctx = JobContext(
            job_id=order["job_id"], attempt=int(order["attempt"]), resources=resources,
            workdir=Path(order["workdir"]), checkpoint_dir=Path(order["checkpoint_dir"]),
            emit=emit, stop=stop, fence=guard,
            restore_from=None if restore is None else [
                (int(c["step"]), Path(c["dir"])) for c in restore],
            output_dir=Path(order["output_dir"]) if order.get("output_dir") else None,
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


def _layer_env(site_dir: str) -> None:
    """The job's env ahead of the node's own site-packages (after the standard library, as in
    any virtualenv), with its .pth files read. Modules the fork server imported already (fleet,
    workers and what they import) stay the node's."""
    import site

    before = list(sys.path)
    site.addsitedir(site_dir)
    added = [p for p in sys.path if p not in before]
    node = {*site.getsitepackages(), site.getusersitepackages()}
    at = next((i for i, p in enumerate(before) if p in node), len(before))
    sys.path[:] = before[:at] + added + before[at:]


def _job_function(module: Any, name: str) -> Any:
    """What submit checked in the source, checked again on the object: a function the module
    defines itself, not a class or a name it imported (which would run code it did not mean
    to expose)."""
    function = getattr(module, name, None)
    if not inspect.isfunction(function) or function.__module__ != module.__name__:
        raise TypeError(f"{module.__name__} defines no function {name!r}")
    return function


if __name__ == "__main__":
    exit_now(main())
