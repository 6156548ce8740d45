"""A node's capacity and usage from the text of cgroup, /proc and nvidia-smi files: pure parsing.

Nothing here opens a file or starts a process (that is `workers.node.cgroup`, `gpus`, `capacity`
and `usage`); every function takes the text it parses, so each is tested on fixture strings.
Inside a container the host's cpu_count and memory mean nothing: the limits are the cgroup's cpu
quota, its cpuset and its memory limit, and `combine_capacity` takes the smallest of what is
known, falling back to the host only when nothing limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# cgroup v1 writes "no memory limit" as the largest page-aligned signed 64-bit value.
V1_UNLIMITED = 9223372036854771712
MIB = 2**20
# combine_capacity's inputs and the name each gets in `source` when the caller gives none.
_INPUTS = {"cgroup_cpus": "cgroup cpu quota", "cpuset": "cpuset", "cgroup_memory": "cgroup"}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    utilization: float | None  # percent busy, None when the driver does not say


@dataclass(frozen=True)
class Capacity:
    cpus: float  # cores
    memory: int  # bytes
    gpus: int
    gpu_memory: int  # bytes of the largest GPU, 0 when none
    cpuset: tuple[int, ...]  # the cpus this node may run on
    source: dict[str, str] = field(default_factory=dict)  # where each number came from

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a node report."""
        out = asdict(self)
        out["cpuset"] = list(self.cpuset)
        return out


@dataclass(frozen=True)
class Usage:
    cpus: float  # cores busy on average since the previous sample
    memory: int  # bytes
    gpus: list[dict[str, Any]] = field(default_factory=list)  # {"index", "util", "memory_used"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("$QUOTA $PERIOD") -> cores; None when the quota is "max"."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = parts[1] if len(parts) > 1 else "100000"
    return parse_cfs(parts[0], period)


def parse_cfs(quota: str, period: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` -> cores; None when quota is -1."""
    q, p = int(quota.strip()), int(period.strip())
    if q <= 0 or p <= 0:
        return None
    return q / p


def parse_cpuset(text: str) -> tuple[int, ...]:
    """A cpuset list ("0-3,6") -> (0, 1, 2, 3, 6); "" -> ()."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return tuple(sorted(cpus))


def parse_memory_limit(text: str, host_memory: int) -> int | None:
    """v2 `memory.max` / v1 `memory.limit_in_bytes` -> bytes; None when it does not limit.

    "max" (v2), v1's page-aligned 2**63 and anything at or above the host's memory all mean
    unlimited: such a limit can never be the one a job runs into.
    """
    value = text.strip()
    if not value or value == "max":
        return None
    limit = int(value)
    if limit < 0 or limit >= V1_UNLIMITED or (host_memory > 0 and limit >= host_memory):
        return None
    return limit


def parse_proc_self_cgroup(text: str) -> dict[str, str]:
    """`/proc/self/cgroup` -> controller -> path.

    A v1 line "4:cpu,cpuacct:/x" gives {"cpu": "/x", "cpuacct": "/x"}; the v2 unified line
    "0::/x" gives {"": "/x"}; named hierarchies keep their name ("name=systemd").
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
            continue
        for controller in controllers.split(","):
            out[controller] = path
    return out


def parse_nvidia_smi(csv: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu
    --format=csv,noheader,nounits` (memory in MiB) -> GpuInfo in bytes. Malformed rows are skipped.
    """
    gpus = []
    for line in csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5:
            continue
        # A GPU name could hold a comma: index first, the three numbers last, the rest the name.
        index, name, total, used, util = cells[0], ",".join(cells[1:-3]), *cells[-3:]
        try:
            gpus.append(
                GpuInfo(
                    index=int(index),
                    name=name,
                    memory_total=int(float(total) * MIB),
                    memory_used=_mib_or_zero(used),
                    utilization=_float_or_none(util),
                )
            )
        except ValueError:
            continue
    return gpus


def combine_capacity(
    *,
    cgroup_cpus: float | None,
    cpuset: Sequence[int],
    cgroup_memory: int | None,
    host_cpus: int,
    host_memory: int,
    configured_cpus: float | None = None,
    configured_memory: int | None = None,
    gpus: Sequence[GpuInfo] = (),
    origins: Mapping[str, str] | None = None,
) -> Capacity:
    """The node's capacity: on each resource the smallest known limit.

    cpus = min(cpu quota, len(cpuset), configured); memory = min(cgroup limit, configured).
    The host's numbers bound both too (a quota above the host's cores cannot be used), and are
    the answer only when nothing else limits. `origins` names where `cgroup_cpus`, `cpuset` and
    `cgroup_memory` were read (e.g. {"cgroup_cpus": "cgroup2 cpu.max /docker/abc"}); the
    winning origin is recorded in `Capacity.source`. On a tie the cgroup is named.
    """
    names = dict(_INPUTS)
    names.update(origins or {})
    cpuset_t = tuple(sorted(set(cpuset)))

    cpu_limits: list[tuple[float, str]] = []
    if cgroup_cpus is not None:
        cpu_limits.append((float(cgroup_cpus), names["cgroup_cpus"]))
    if cpuset_t:
        cpu_limits.append((float(len(cpuset_t)), names["cpuset"]))
    if configured_cpus is not None:
        cpu_limits.append((float(configured_cpus), "configured"))
    if host_cpus > 0:
        cpu_limits.append((float(host_cpus), "host"))
    cpus, cpus_from = min(cpu_limits, key=lambda c: c[0]) if cpu_limits else (0.0, "unknown")

    mem_limits: list[tuple[int, str]] = []
    if cgroup_memory is not None:
        mem_limits.append((int(cgroup_memory), names["cgroup_memory"]))
    if configured_memory is not None:
        mem_limits.append((int(configured_memory), "configured"))
    if host_memory > 0:
        mem_limits.append((int(host_memory), "host"))
    memory, memory_from = min(mem_limits, key=lambda m: m[0]) if mem_limits else (0, "unknown")

    source = {"cpus": cpus_from, "memory": memory_from}
    if cpuset_t:
        source["cpuset"] = names["cpuset"]
    else:
        cpuset_t = tuple(range(max(host_cpus, 0)))
        source["cpuset"] = "host"
    # Anything else the caller noted (the cgroup version, files it could not read) is kept.
    source.update({k: v for k, v in names.items() if k not in _INPUTS})
    return Capacity(
        cpus=cpus,
        memory=memory,
        gpus=len(gpus),
        gpu_memory=max((g.memory_total for g in gpus), default=0),
        cpuset=cpuset_t,
        source=source,
    )


def parse_cpu_stat_usage(text: str, version: int) -> float:
    """Cumulative CPU seconds of a cgroup: v2 `cpu.stat` usage_usec, v1 `cpuacct.usage` (ns)."""
    if version == 2:
        return parse_keyed_counters(text)["usage_usec"] / 1e6
    return int(text.strip()) / 1e9


def parse_memory_current(text: str) -> int:
    """A one-number file: v2 `memory.current`, v1 `memory.usage_in_bytes` or `memory.failcnt`."""
    return int(text.strip())


def parse_keyed_counters(text: str) -> dict[str, int]:
    """Lines of "key value" (`cpu.stat`, `memory.stat`, `memory.events`, `memory.oom_control`)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_oom_kill(text: str) -> int | None:
    """The oom_kill counter of v2 `memory.events` or v1 `memory.oom_control`.

    None when the file has no such line (v1 kernels before 4.13): `memory.failcnt` counts hits
    on the limit, not kills, so it is no stand-in.
    """
    return parse_keyed_counters(text).get("oom_kill")


def working_set(current: int, stat_text: str, version: int) -> int:
    """Memory in use less the inactive page cache the kernel reclaims first (docker stats' rule).

    `current` is v2 `memory.current` or v1 `memory.usage_in_bytes`; `stat_text` the same
    cgroup's `memory.stat`.
    """
    stat = parse_keyed_counters(stat_text)
    key = "inactive_file" if version == 2 else "total_inactive_file"
    inactive = stat.get(key, stat.get("inactive_file", 0))
    return max(current - inactive, 0)


def _mib_or_zero(cell: str) -> int:
    value = _float_or_none(cell)
    return int(value * MIB) if value is not None else 0


def _float_or_none(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None
