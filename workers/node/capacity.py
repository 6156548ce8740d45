"""What a node has: its capacity, the smallest of its cgroup limits, cpu affinity, configuration.

Inside a container the host's cpu count and memory mean nothing: the limits are the cgroup's (see
`workers.node.cgroup`), combined by `workers.node.parsing.combine_capacity`. Every path is taken
under `root` so tests point it at a fixture tree; nothing here raises for a missing or unreadable
file: it falls back (a parent cgroup, the cpu affinity, the host) and says so in
`Capacity.source`. What the node uses now is `workers.node.usage`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import psutil

from workers.node import cgroup, gpus, parsing
from workers.node.parsing import Capacity


def host_resources() -> tuple[int, int]:
    """(logical cpus, memory bytes) of the machine: what bounds a node when nothing else does."""
    return psutil.cpu_count(logical=True) or os.cpu_count() or 0, int(psutil.virtual_memory().total)


def read_capacity(
    *,
    root: Path = Path("/"),
    configured_cpus: float | None = None,
    configured_memory: int | None = None,
    affinity: Collection[int] | None = None,
) -> Capacity:
    """This node's capacity: the smallest of its cgroup limits, cpu affinity and configuration.

    `affinity` is the set of cpus the process may run on; None reads os.sched_getaffinity(0),
    an empty collection leaves it out (tests pointing `root` at a fixture tree do that).
    """
    host_cpus, host_memory = host_resources()
    origins: dict[str, str] = {}
    cgroup_cpus: float | None = None
    cgroup_memory: int | None = None
    cgroup_cpuset: tuple[int, ...] = ()

    view = cgroup.find_cgroup(root)
    if view is None:
        origins["cgroup"] = "none found"
    else:
        origins["cgroup"] = f"v{view.version}"
        found = cgroup.cpu_quota(view)
        if found:
            cgroup_cpus, origins["cgroup_cpus"] = found
        found_set = cgroup.cpuset(view)
        if found_set:
            cgroup_cpuset, origins["cpuset"] = found_set
        found_mem = cgroup.memory_limit(view, host_memory)
        if found_mem:
            cgroup_memory, origins["cgroup_memory"] = found_mem

    cpuset = cgroup_cpuset
    if affinity is None:
        affinity = _sched_affinity()
    if affinity:
        mine = tuple(sorted(set(affinity)))
        if not cpuset:
            cpuset, origins["cpuset"] = mine, "sched_getaffinity"
        else:
            both = tuple(sorted(set(cpuset) & set(mine)))
            if both and both != cpuset:
                cpuset, origins["cpuset"] = both, origins["cpuset"] + " & sched_getaffinity"

    found_gpus, origins["gpus"] = gpus.read_gpus()
    if view is not None and view.unreadable:
        origins["unreadable"] = "; ".join(view.unreadable)
    return parsing.combine_capacity(
        cgroup_cpus=cgroup_cpus,
        cpuset=cpuset,
        cgroup_memory=cgroup_memory,
        host_cpus=host_cpus,
        host_memory=host_memory,
        configured_cpus=configured_cpus,
        configured_memory=configured_memory,
        gpus=found_gpus,
        origins=origins,
    )


def _sched_affinity() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return ()
