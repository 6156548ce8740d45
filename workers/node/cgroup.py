"""A node's cgroup, read: where it is (v1 or v2, nested or not) and what its files say.

Where: `find_cgroup` locates this process's cgroup under `root` (tests point it at a fixture
tree). What: the limits (cpu quota, cpuset, memory), the usage counters and the oom_kill counter,
each read with `CgroupView.read` and parsed by `workers.node.parsing`. Nothing here raises for a
missing or unreadable file: a limit lives on some levels only, and what could not be read is
noted in `CgroupView.unreadable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from workers.node import parsing

_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory")

T = TypeVar("T")


@dataclass
class CgroupView:
    """Where this process's cgroup lives: per controller, its directories from the process's own
    cgroup up to the hierarchy's mount root (v2 has one hierarchy, keyed "")."""

    version: int
    mounts: dict[str, Path]
    chains: dict[str, list[Path]]
    unreadable: list[str] = field(default_factory=list)

    def chain(self, controller: str) -> list[Path]:
        return self.chains.get("" if self.version == 2 else controller, [])

    def where(self, controller: str, directory: Path) -> str:
        """`/docker/abc`: a directory as a cgroup path, for `source`."""
        mount = self.mounts.get("" if self.version == 2 else controller)
        if mount is None:
            return str(directory)
        rel = directory.relative_to(mount).as_posix()
        return "/" if rel == "." else "/" + rel

    def read(self, directory: Path, name: str, parse: Callable[[str], T]) -> T | None:
        """Parse one file; None when it is absent (normal: limits live on some levels only) or
        unreadable or malformed (noted in `unreadable`)."""
        path = directory / name
        try:
            return parse(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            self.unreadable.append(f"{path}: {type(exc).__name__}")
            return None


def find_cgroup(root: Path = Path("/")) -> CgroupView | None:
    """Locate this process's cgroup under `<root>/sys/fs/cgroup`, v2 or v1; None if there is none.

    /proc/self/cgroup gives a path relative to the hierarchy's root. Inside a container with its
    own cgroup namespace that path is "/" and the mount root is the container's cgroup; without
    one the path names the host's nested cgroup ("/docker/abc"), which may or may not exist
    under the mount: when it does, the chain walks from it up to the mount root, otherwise the
    mount root alone stands for the container.
    """
    try:
        paths = parsing.parse_proc_self_cgroup((root / "proc/self/cgroup").read_text())
    except (OSError, ValueError):
        paths = {}
    base = root / "sys/fs/cgroup"
    if not base.is_dir():
        return None
    v1_named = any(c in paths for c in _V1_CONTROLLERS)
    if (base / "cgroup.controllers").is_file() or (paths and not v1_named):
        return CgroupView(2, {"": base}, {"": _chain(base, paths.get("", "/"))})
    mounts: dict[str, Path] = {}
    chains: dict[str, list[Path]] = {}
    for controller in _V1_CONTROLLERS:
        mount = _v1_mount(base, controller)
        if mount is not None:
            mounts[controller] = mount
            chains[controller] = _chain(mount, paths.get(controller, "/"))
    if not mounts:
        return None
    return CgroupView(1, mounts, chains)


class OomKillCounter:
    """The cgroup's oom_kill counter (v2 memory.events, v1 memory.oom_control), own cgroup first.

    Where to read it is found at the first read, then kept: the worker confines itself before
    its first job and its cgroup does not change after, and a job's end should cost a file
    read, not a walk of the cgroup tree.
    """

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self._readers: list[Callable[[], int | None]] | None = None

    def read(self) -> int | None:
        """The count; None if it cannot be read (no cgroup, or a v1 kernel without it)."""
        if self._readers is None:
            view = find_cgroup(self.root)
            name = "memory.events" if view is not None and view.version == 2 else "memory.oom_control"
            self._readers = [] if view is None else [
                partial(view.read, d, name, parsing.parse_oom_kill) for d in view.chain("memory")]
        for read in self._readers:
            count = read()
            if count is not None:
                return count
        return None


def cpu_quota(view: CgroupView) -> tuple[float, str] | None:
    """The smallest cpu quota from the process's cgroup up, in cores, and where it was read."""
    best: tuple[float, str] | None = None
    for directory in view.chain("cpu"):
        if view.version == 2:
            cores = view.read(directory, "cpu.max", parsing.parse_cpu_max)
            what = "cpu.max"
        else:
            cores = _cfs_cores(view, directory)
            what = "cpu.cfs_quota_us"
        if cores is not None and (best is None or cores < best[0]):
            best = (cores, f"cgroup{view.version} {what} {view.where('cpu', directory)}")
    return best


def _cfs_cores(view: CgroupView, directory: Path) -> float | None:
    period = view.read(directory, "cpu.cfs_period_us", str)
    if period is None:
        return None
    return view.read(directory, "cpu.cfs_quota_us", lambda quota: parsing.parse_cfs(quota, period))


def cpuset(view: CgroupView) -> tuple[tuple[int, ...], str] | None:
    """The cpus of the nearest cgroup that lists them (the effective set already reflects every
    ancestor; an empty v2 `cpuset.cpus` means inherit)."""
    names = (
        ("cpuset.cpus.effective", "cpuset.cpus")
        if view.version == 2
        else ("cpuset.effective_cpus", "cpuset.cpus")
    )
    for directory in view.chain("cpuset"):
        for name in names:
            cpus = view.read(directory, name, parsing.parse_cpuset)
            if cpus:
                return cpus, f"cgroup{view.version} {name} {view.where('cpuset', directory)}"
    return None


def memory_limit(view: CgroupView, host_memory: int) -> tuple[int, str] | None:
    """The smallest memory limit from the process's cgroup up, and where it was read."""
    name = "memory.max" if view.version == 2 else "memory.limit_in_bytes"
    best: tuple[int, str] | None = None
    for directory in view.chain("memory"):
        limit = view.read(directory, name, lambda t: parsing.parse_memory_limit(t, host_memory))
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, f"cgroup{view.version} {name} {view.where('memory', directory)}")
    return best


def is_limited(view: CgroupView, host_memory: int) -> bool:
    """Whether the cgroup limits cpu or memory (a memory limit at the host's size does not)."""
    return cpu_quota(view) is not None or memory_limit(view, host_memory) is not None


def counters(view: CgroupView) -> tuple[float, int] | None:
    """(cumulative cpu seconds, working-set bytes) of the process's own cgroup."""
    v = view.version
    cpu_dirs = view.chain("cpuacct") if v == 1 else view.chain("")
    mem_dirs = view.chain("memory")
    if not cpu_dirs or not mem_dirs:
        return None
    cpu_file = "cpu.stat" if v == 2 else "cpuacct.usage"
    seconds = view.read(cpu_dirs[0], cpu_file, lambda t: parsing.parse_cpu_stat_usage(t, v))
    current = view.read(
        mem_dirs[0],
        "memory.current" if v == 2 else "memory.usage_in_bytes",
        parsing.parse_memory_current,
    )
    if seconds is None or current is None:
        return None
    stat = view.read(mem_dirs[0], "memory.stat", str) or ""
    return seconds, parsing.working_set(current, stat, v)


def _chain(mount: Path, cgroup_path: str) -> list[Path]:
    """Directories from the process's own cgroup up to the mount root, own cgroup first."""
    parts = [p for p in Path(cgroup_path).parts if p not in ("/", "")]
    if ".." in parts:  # outside our cgroup namespace: the mount root is all we can see
        return [mount]
    leaf = mount.joinpath(*parts)
    if not leaf.is_dir():
        return [mount]
    chain = [leaf]
    while chain[-1] != mount:
        chain.append(chain[-1].parent)
    return chain


def _v1_mount(base: Path, controller: str) -> Path | None:
    """The v1 hierarchy holding `controller`: `cpu`, or a co-mounted `cpu,cpuacct`."""
    if (base / controller).is_dir():
        return base / controller
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return None
    for entry in entries:
        if controller in entry.name.split(",") and entry.is_dir():
            return entry
    return None
