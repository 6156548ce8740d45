"""Pure cgroup / nvidia-smi parsing, on fixture strings and fixture files."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.node import parsing
from workers.node.parsing import GpuInfo

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
GIB = 2**30
HOST_MEMORY = 64 * GIB


def fixture(tree: str, rel: str) -> str:
    return (FIXTURES / tree / rel).read_text()


# cpu quota


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("max 100000", None),
        ("max", None),
        ("150000 100000", 1.5),
        ("50000 100000\n", 0.5),
        ("200000", 2.0),
        ("", None),
    ],
)
def test_cpu_max_gives_cores_or_none_when_unlimited(text: str, cores: float | None) -> None:
    assert parsing.parse_cpu_max(text) == cores


def test_cpu_max_fixture_files() -> None:
    assert parsing.parse_cpu_max(fixture("v2", "sys/fs/cgroup/cpu.max")) == 1.0
    assert parsing.parse_cpu_max(fixture("v2-unlimited", "sys/fs/cgroup/cpu.max")) is None
    assert parsing.parse_cpu_max(fixture("v2-nested", "sys/fs/cgroup/docker/abc/cpu.max")) == 2.5


@pytest.mark.parametrize(
    ("quota", "period", "cores"),
    [("-1", "100000", None), ("150000\n", "100000\n", 1.5), ("25000", "50000", 0.5)],
)
def test_cfs_quota_gives_cores_or_none_when_unlimited(
    quota: str, period: str, cores: float | None
) -> None:
    assert parsing.parse_cfs(quota, period) == cores


def test_cfs_fixture_files() -> None:
    d = "sys/fs/cgroup/cpu,cpuacct/"
    assert (
        parsing.parse_cfs(
            fixture("v1", d + "cpu.cfs_quota_us"), fixture("v1", d + "cpu.cfs_period_us")
        )
        == 1.5
    )
    u = "sys/fs/cgroup/cpu/"
    assert (
        parsing.parse_cfs(
            fixture("v1-unlimited", u + "cpu.cfs_quota_us"),
            fixture("v1-unlimited", u + "cpu.cfs_period_us"),
        )
        is None
    )


# cpuset


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,6", (0, 1, 2, 3, 6)),
        ("", ()),
        ("\n", ()),
        ("5", (5,)),
        ("0-1\n", (0, 1)),
        ("8-9,0,2-3", (0, 2, 3, 8, 9)),
    ],
)
def test_cpuset_lists_each_cpu_once_in_order(text: str, cpus: tuple[int, ...]) -> None:
    assert parsing.parse_cpuset(text) == cpus


# memory limit


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("max\n", None),
        ("9223372036854771712\n", None),
        (str(HOST_MEMORY), None),
        (str(HOST_MEMORY + 1), None),
        ("1073741824\n", GIB),
        ("", None),
    ],
)
def test_memory_limit_none_when_it_cannot_bind(text: str, limit: int | None) -> None:
    assert parsing.parse_memory_limit(text, HOST_MEMORY) == limit


def test_memory_limit_fixture_files() -> None:
    assert parsing.parse_memory_limit(fixture("v2", "sys/fs/cgroup/memory.max"), HOST_MEMORY) == GIB
    assert (
        parsing.parse_memory_limit(
            fixture("v1", "sys/fs/cgroup/memory/memory.limit_in_bytes"), HOST_MEMORY
        )
        == 2 * GIB
    )
    assert (
        parsing.parse_memory_limit(
            fixture("v1-unlimited", "sys/fs/cgroup/memory/memory.limit_in_bytes"), HOST_MEMORY
        )
        is None
    )


# /proc/self/cgroup


def test_proc_self_cgroup_v2_unified_line() -> None:
    assert parsing.parse_proc_self_cgroup("0::/x\n") == {"": "/x"}
    assert parsing.parse_proc_self_cgroup(fixture("v2-nested", "proc/self/cgroup")) == {
        "": "/docker/abc"
    }


def test_proc_self_cgroup_v1_splits_comounted_controllers() -> None:
    paths = parsing.parse_proc_self_cgroup(fixture("v1", "proc/self/cgroup"))
    assert paths["cpu"] == paths["cpuacct"] == "/docker/abc123"
    assert paths["cpuset"] == paths["memory"] == "/docker/abc123"
    assert paths["name=systemd"] == "/docker/abc123"
    assert paths[""] == "/system.slice/containerd.service"


def test_proc_self_cgroup_ignores_garbage_lines() -> None:
    assert parsing.parse_proc_self_cgroup("garbage\n\n4:memory:/a:b\n") == {"memory": "/a:b"}


# GPUs


def test_nvidia_smi_csv_in_bytes_with_missing_utilisation() -> None:
    gpus = parsing.parse_nvidia_smi((FIXTURES / "nvidia-smi.csv").read_text())
    assert gpus == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559 * 2**20, 1024 * 2**20, 37.0),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 81559 * 2**20, 0, None),
        GpuInfo(2, "Tesla T4", 15360 * 2**20, 512 * 2**20, 5.0),
    ]


def test_nvidia_smi_skips_malformed_rows_and_keeps_commas_in_names() -> None:
    text = "No devices were found\n0, Weird, GPU, 100, 1, 2\nx, a, 1, 2, 3\n"
    assert parsing.parse_nvidia_smi(text) == [GpuInfo(0, "Weird,GPU", 100 * 2**20, 2**20, 2.0)]
    assert parsing.parse_nvidia_smi("") == []


# combine_capacity


def combine(**kw: object) -> parsing.Capacity:
    args: dict[str, object] = {
        "cgroup_cpus": None,
        "cpuset": (),
        "cgroup_memory": None,
        "host_cpus": 16,
        "host_memory": HOST_MEMORY,
    }
    args.update(kw)
    return parsing.combine_capacity(**args)  # type: ignore[arg-type]


def test_capacity_is_the_host_only_when_nothing_limits() -> None:
    cap = combine()
    assert (cap.cpus, cap.memory) == (16.0, HOST_MEMORY)
    assert cap.cpuset == tuple(range(16))
    assert cap.source["cpus"] == cap.source["memory"] == "host"


def test_capacity_takes_the_smallest_cpu_limit() -> None:
    assert combine(cgroup_cpus=1.5, cpuset=(0, 1, 2, 3)).cpus == 1.5
    cap = combine(cgroup_cpus=6.0, cpuset=(0, 1, 2, 3))
    assert (cap.cpus, cap.cpuset, cap.source["cpus"]) == (4.0, (0, 1, 2, 3), "cpuset")
    assert combine(cgroup_cpus=64.0).cpus == 16.0  # a quota above the host cannot be used


def test_configured_limits_win_when_lower() -> None:
    cap = combine(
        cgroup_cpus=2.0, cgroup_memory=4 * GIB, configured_cpus=0.5, configured_memory=GIB
    )
    assert (cap.cpus, cap.memory) == (0.5, GIB)
    assert cap.source["cpus"] == cap.source["memory"] == "configured"


def test_configured_limits_lose_when_higher() -> None:
    cap = combine(
        cgroup_cpus=2.0,
        cgroup_memory=4 * GIB,
        configured_cpus=8.0,
        configured_memory=8 * GIB,
        origins={"cgroup_cpus": "cgroup2 cpu.max /", "cgroup_memory": "cgroup2 m /"},
    )
    assert (cap.cpus, cap.memory) == (2.0, 4 * GIB)
    assert cap.source["cpus"] == "cgroup2 cpu.max /"
    assert cap.source["memory"] == "cgroup2 m /"


def test_capacity_gpus_count_and_largest_memory() -> None:
    gpus = parsing.parse_nvidia_smi((FIXTURES / "nvidia-smi.csv").read_text())
    cap = combine(gpus=gpus)
    assert (cap.gpus, cap.gpu_memory) == (3, 81559 * 2**20)
    assert (combine().gpus, combine().gpu_memory) == (0, 0)


def test_capacity_keeps_extra_notes_and_serialises() -> None:
    cap = combine(origins={"cgroup": "v1", "gpus": "nvidia-smi"})
    assert cap.source["cgroup"] == "v1" and cap.source["gpus"] == "nvidia-smi"
    d = cap.to_dict()
    assert d["cpuset"] == list(range(16)) and d["memory"] == HOST_MEMORY


# usage counters


def test_cpu_stat_usage_seconds_v2_and_v1() -> None:
    assert parsing.parse_cpu_stat_usage(fixture("v2", "sys/fs/cgroup/cpu.stat"), 2) == 12.5
    assert (
        parsing.parse_cpu_stat_usage(fixture("v1", "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"), 1)
        == 7.25
    )


def test_memory_current_and_failcnt() -> None:
    assert parsing.parse_memory_current(fixture("v2", "sys/fs/cgroup/memory.current")) == 300 * 2**20
    assert (
        parsing.parse_memory_current(fixture("v1", "sys/fs/cgroup/memory/memory.usage_in_bytes"))
        == 512 * 2**20
    )
    assert parsing.parse_memory_current(fixture("v1", "sys/fs/cgroup/memory/memory.failcnt")) == 7


def test_oom_kill_counter_v2_events_and_v1_oom_control() -> None:
    assert parsing.parse_oom_kill(fixture("v2", "sys/fs/cgroup/memory.events")) == 2
    assert parsing.parse_oom_kill(fixture("v1", "sys/fs/cgroup/memory/memory.oom_control")) == 3
    # kernels before 4.13 have no oom_kill line in memory.oom_control
    assert (
        parsing.parse_oom_kill(fixture("v1-unlimited", "sys/fs/cgroup/memory/memory.oom_control"))
        is None
    )


def test_working_set_leaves_out_inactive_page_cache() -> None:
    v2 = parsing.working_set(300 * 2**20, fixture("v2", "sys/fs/cgroup/memory.stat"), 2)
    assert v2 == 260 * 2**20
    v1 = parsing.working_set(512 * 2**20, fixture("v1", "sys/fs/cgroup/memory/memory.stat"), 1)
    assert v1 == 480 * 2**20
    assert parsing.working_set(100, "", 2) == 100
