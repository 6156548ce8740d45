"""What a node uses now: its cores busy, its memory in use, each GPU's load; and a job's memory.

`UsageProbe` measures the node (cgroup counters when it runs in a limited cgroup of its own,
else its process tree); `TreeMemory` measures one job's process tree on each supervisor tick.
What the node has is `workers.node.capacity`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from workers.node import capacity, cgroup, gpus
from workers.node.cgroup import CgroupView
from workers.node.parsing import Usage


class UsageProbe:
    """Measured usage of a node: cgroup counters when the node runs in its own limited cgroup (a
    container), else the process tree rooted at a pid (a local node: the worker and its job
    processes) via psutil.

    Given `root_pid`, the probe measures that tree. Without it, it measures the cgroup when the
    cgroup limits cpu or memory and its counters are readable, else this process's tree.
    """

    def __init__(self, *, root_pid: int | None = None, root: Path = Path("/")) -> None:
        self._view: CgroupView | None = None
        if root_pid is None:
            view = cgroup.find_cgroup(root)
            host_memory = capacity.host_resources()[1]
            if (view is not None and cgroup.is_limited(view, host_memory)
                    and cgroup.counters(view) is not None):
                self._view = view
            else:
                root_pid = os.getpid()
        self.root_pid = root_pid
        self.mode = "cgroup" if self._view is not None else "tree"
        self._last_time: float | None = None
        # cumulative cpu seconds at the last sample (cgroup or tree), None before the first
        self.cpu_seconds: float | None = None

    def sample(self) -> Usage:
        """Cores busy on average since the previous sample (0.0 on the first), memory in use now,
        and each GPU's utilisation and memory."""
        now = time.monotonic()
        if self._view is not None:
            cpu_seconds, memory = cgroup.counters(self._view) or (None, 0)
        else:
            assert self.root_pid is not None
            cpu_seconds, memory = _tree_counters(self.root_pid)
        cpus = 0.0
        if cpu_seconds is not None:
            last_time, last_seconds = self._last_time, self.cpu_seconds
            if last_time is not None and last_seconds is not None and now > last_time:
                cpus = max(cpu_seconds - last_seconds, 0.0) / (now - last_time)
            self._last_time, self.cpu_seconds = now, cpu_seconds
        found, _ = gpus.read_gpus()
        return Usage(
            cpus=cpus,
            memory=memory,
            gpus=[
                {"index": g.index, "util": g.utilization, "memory_used": g.memory_used}
                for g in found
            ],
        )


class TreeMemory:
    """Resident memory of a process and all its descendants, sampled on every supervisor tick.

    Finding the descendants means reading the stat file of every process on the machine
    (psutil's children(); /proc/PID/task/*/children is not in every kernel): ~1 ms with 80
    processes, more on a busy host, and it would run five times a second on the job's own
    core. So the tree is found again only every `rescan_s`; in between, each tick reads
    the memory of the members already known (one /proc read each). A child the job starts is
    counted from the next rescan on.
    """

    def __init__(self, pid: int, rescan_s: float = 1.0) -> None:
        self.pid = pid
        self.rescan_s = rescan_s
        self._members: list[psutil.Process] = []
        self._next_scan = 0.0

    def sample(self) -> int:
        """Bytes resident in the tree now; 0 once the process is gone."""
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + self.rescan_s
            try:
                top = psutil.Process(self.pid)
                self._members = [top, *top.children(recursive=True)]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._members = []
        total = 0
        for proc in list(self._members):
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._members.remove(proc)
        return total


def _tree_counters(pid: int) -> tuple[float, int]:
    """(cumulative cpu seconds, resident bytes) of a process and its descendants.

    Cpu time counts each live process's own time plus what it has reaped from its children, so
    a job that ended between two samples is still counted once, by its parent.
    """
    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0
    seconds, rss = 0.0, 0
    for proc in procs:
        try:
            with proc.oneshot():
                t: Any = proc.cpu_times()
                rss += proc.memory_info().rss
            seconds += t.user + t.system + t.children_user + t.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return seconds, rss
