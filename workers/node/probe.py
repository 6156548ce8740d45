"""A node's real capacity and measured usage, read from its cgroup, /proc, psutil and the GPUs.

The I/O half of `workers.node.load`: this module finds and reads the files, `load` parses them. Every
path is taken under `root` so tests point it at a fixture tree. Nothing here raises for a missing
or unreadable file: it falls back (a parent cgroup, the cpu affinity, the host) and says so in
`Capacity.source`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from workers.node import load
from workers.node.load import Capacity, GpuInfo, Usage

NVIDIA_SMI_QUERY = "index,name,memory.total,memory.used,utilization.gpu"
NVIDIA_SMI_TIMEOUT = 5.0
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


def host_resources() -> tuple[int, int]:
    """(logical cpus, memory bytes) of the machine: what bounds a node when nothing else does."""
    return psutil.cpu_count(logical=True) or os.cpu_count() or 0, int(psutil.virtual_memory().total)


def find_cgroup(root: Path = Path("/")) -> CgroupView | None:
    """Locate this process's cgroup under `<root>/sys/fs/cgroup`, v2 or v1; None if there is none.

    /proc/self/cgroup gives a path relative to the hierarchy's root. Inside a container with its
    own cgroup namespace that path is "/" and the mount root is the container's cgroup; without
    one the path names the host's nested cgroup ("/docker/abc"), which may or may not exist
    under the mount: when it does, the chain walks from it up to the mount root, otherwise the
    mount root alone stands for the container.
    """
    try:
        paths = load.parse_proc_self_cgroup((root / "proc/self/cgroup").read_text())
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

    view = find_cgroup(root)
    if view is None:
        origins["cgroup"] = "none found"
    else:
        origins["cgroup"] = f"v{view.version}"
        found = _cpu_quota(view)
        if found:
            cgroup_cpus, origins["cgroup_cpus"] = found
        found_set = _cpuset(view)
        if found_set:
            cgroup_cpuset, origins["cpuset"] = found_set
        found_mem = _memory_limit(view, host_memory)
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

    gpus, origins["gpus"] = read_gpus()
    if view is not None and view.unreadable:
        origins["unreadable"] = "; ".join(view.unreadable)
    return load.combine_capacity(
        cgroup_cpus=cgroup_cpus,
        cpuset=cpuset,
        cgroup_memory=cgroup_memory,
        host_cpus=host_cpus,
        host_memory=host_memory,
        configured_cpus=configured_cpus,
        configured_memory=configured_memory,
        gpus=gpus,
        origins=origins,
    )


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
            view = find_cgroup(root)
            if view is not None and _is_limited(view) and _cgroup_counters(view) is not None:
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
            cpu_seconds, memory = _cgroup_counters(self._view) or (None, 0)
        else:
            assert self.root_pid is not None
            cpu_seconds, memory = _tree_counters(self.root_pid)
        cpus = 0.0
        if cpu_seconds is not None:
            last_time, last_seconds = self._last_time, self.cpu_seconds
            if last_time is not None and last_seconds is not None and now > last_time:
                cpus = max(cpu_seconds - last_seconds, 0.0) / (now - last_time)
            self._last_time, self.cpu_seconds = now, cpu_seconds
        gpus, _ = read_gpus()
        return Usage(
            cpus=cpus,
            memory=memory,
            gpus=[
                {"index": g.index, "util": g.utilization, "memory_used": g.memory_used}
                for g in gpus
            ],
        )


class TreeMemory:
    """Resident memory of a process and all its descendants, sampled on every supervisor tick.

    Finding the descendants means reading the stat file of every process on the machine
    (psutil's children(); /proc/PID/task/*/children is not in every kernel): ~1 ms with 80
    processes, more on a busy host, and five times a second on the job's own core that is
    the job's time. So the tree is found again only every `rescan_s`; in between, each tick reads
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


def oom_kill_count(root: Path = Path("/")) -> int | None:
    """The cgroup's oom_kill counter (v2 memory.events, v1 memory.oom_control); None if the
    counter cannot be read (no cgroup, or a v1 kernel without it)."""
    view = find_cgroup(root)
    if view is None:
        return None
    name = "memory.events" if view.version == 2 else "memory.oom_control"
    for directory in view.chain("memory"):
        count = view.read(directory, name, load.parse_oom_kill)
        if count is not None:
            return count
    return None


def read_gpus() -> tuple[list[GpuInfo], str]:
    """The GPUs this process sees and where that came from: pynvml when importable, else
    `nvidia-smi` when on PATH; any failure means no GPUs."""
    gpus = _nvml_gpus()
    if gpus is not None:
        return gpus, "pynvml"
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "none (no pynvml, no nvidia-smi)"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"none (nvidia-smi failed: {type(exc).__name__})"
    return load.parse_nvidia_smi(out), "nvidia-smi"


def _nvml_gpus() -> list[GpuInfo] | None:
    try:
        import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()  # reference counted: cheap after the first
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                try:
                    util: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except pynvml.NVMLError:
                    util = None
                gpus.append(
                    GpuInfo(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        memory_total=int(mem.total),
                        memory_used=int(mem.used),
                        utilization=util,
                    )
                )
            return gpus
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # any NVML failure (no driver, no device) falls through to nvidia-smi
        return None


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


def _cpu_quota(view: CgroupView) -> tuple[float, str] | None:
    """The smallest cpu quota from the process's cgroup up, in cores, and where it was read."""
    best: tuple[float, str] | None = None
    for directory in view.chain("cpu"):
        if view.version == 2:
            cores = view.read(directory, "cpu.max", load.parse_cpu_max)
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
    return view.read(directory, "cpu.cfs_quota_us", lambda quota: load.parse_cfs(quota, period))


def _cpuset(view: CgroupView) -> tuple[tuple[int, ...], str] | None:
    """The cpus of the nearest cgroup that lists them (the effective set already reflects every
    ancestor; an empty v2 `cpuset.cpus` means inherit)."""
    names = (
        ("cpuset.cpus.effective", "cpuset.cpus")
        if view.version == 2
        else ("cpuset.effective_cpus", "cpuset.cpus")
    )
    for directory in view.chain("cpuset"):
        for name in names:
            cpus = view.read(directory, name, load.parse_cpuset)
            if cpus:
                return cpus, f"cgroup{view.version} {name} {view.where('cpuset', directory)}"
    return None


def _memory_limit(view: CgroupView, host_memory: int) -> tuple[int, str] | None:
    """The smallest memory limit from the process's cgroup up, and where it was read."""
    name = "memory.max" if view.version == 2 else "memory.limit_in_bytes"
    best: tuple[int, str] | None = None
    for directory in view.chain("memory"):
        limit = view.read(directory, name, lambda t: load.parse_memory_limit(t, host_memory))
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, f"cgroup{view.version} {name} {view.where('memory', directory)}")
    return best


def _is_limited(view: CgroupView) -> bool:
    host_memory = host_resources()[1]
    return _cpu_quota(view) is not None or _memory_limit(view, host_memory) is not None


def _cgroup_counters(view: CgroupView) -> tuple[float, int] | None:
    """(cumulative cpu seconds, working-set bytes) of the process's own cgroup."""
    v = view.version
    cpu_dirs = view.chain("cpuacct") if v == 1 else view.chain("")
    mem_dirs = view.chain("memory")
    if not cpu_dirs or not mem_dirs:
        return None
    cpu_file = "cpu.stat" if v == 2 else "cpuacct.usage"
    seconds = view.read(cpu_dirs[0], cpu_file, lambda t: load.parse_cpu_stat_usage(t, v))
    current = view.read(
        mem_dirs[0],
        "memory.current" if v == 2 else "memory.usage_in_bytes",
        load.parse_memory_current,
    )
    if seconds is None or current is None:
        return None
    stat = view.read(mem_dirs[0], "memory.stat", str) or ""
    return seconds, load.working_set(current, stat, v)


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


def _sched_affinity() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return ()
