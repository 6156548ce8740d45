"""Confine a local node in cgroups of its own, where the cgroup filesystem is writable.

A local node (no container) asks for CPUs and memory; pinning and per-job watchdogs keep it to
them, and this makes the kernel enforce them too: the node's worker process moves itself into
new `cpu` and `memory` cgroups (v1) or one unified cgroup (v2) under its current one, with a CFS
quota of `cpus` and a memory limit, before it starts any job. Its jobs inherit them, and the
node agent then reads its capacity back from them like a container's.
Where cgroups are read-only (most unprivileged setups) it does nothing and says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from workers.node.cgroup import find_cgroup

log = logging.getLogger("fleet.confine")

PERIOD_US = 100_000


def confine(name: str, cpus: float | None, memory: int | None, root: Path = Path("/")) -> list[str]:
    """Move this process into fresh cgroups limited to `cpus` and `memory`. Returns the cgroup
    directories used (empty when not writable). Leftover empty cgroups of earlier runs of the
    same node are removed first."""
    view = find_cgroup(root)
    if view is None or (cpus is None and memory is None):
        return []
    wanted: list[tuple[str, list[tuple[str, str]]]] = []
    if view.version == 2:
        files = []
        if cpus is not None:
            files.append(("cpu.max", f"{int(cpus * PERIOD_US)} {PERIOD_US}"))
        if memory is not None:
            files += [("memory.max", str(memory)), ("memory.swap.max", "0")]
        wanted.append(("", files))
    else:
        if cpus is not None:
            wanted.append(("cpu", [("cpu.cfs_period_us", str(PERIOD_US)),
                                   ("cpu.cfs_quota_us", str(int(cpus * PERIOD_US)))]))
        if memory is not None:
            wanted.append(("memory", [("memory.limit_in_bytes", str(memory))]))
    made: list[str] = []
    for controller, files in wanted:
        chain = view.chain(controller)
        if not chain:
            continue
        parent = chain[0]
        _sweep(parent, name)
        directory = parent / f"fleet-{name}-{os.getpid()}"
        try:
            directory.mkdir(exist_ok=True)
            for filename, value in files:
                (directory / filename).write_text(value)
            (directory / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            log.info("cgroup %s not writable here (%s): confined by pinning and watchdogs only",
                     controller or "v2", exc)
            _remove(directory)
            continue
        made.append(str(directory))
    return made


def _sweep(parent: Path, name: str) -> None:
    for old in parent.glob(f"fleet-{name}-*"):
        _remove(old)


def _remove(directory: Path) -> None:
    try:
        directory.rmdir()  # only succeeds once empty: a live node's cgroup is never removed
    except OSError:
        pass
