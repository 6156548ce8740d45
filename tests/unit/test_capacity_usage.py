"""Reading capacity and usage: fixture cgroup trees, and real processes on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.node import capacity as node_capacity
from workers.node import cgroup, parsing, usage
from workers.node import gpus as node_gpus

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
GIB, MIB = 2**30, 2**20
HOST_CPUS, HOST_MEMORY = 64, 256 * GIB  # a fixture tree's host: bigger than any of its limits


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixture trees describe some other machine: pin the host and its GPUs to known values."""
    monkeypatch.setattr(node_capacity, "host_resources", lambda: (HOST_CPUS, HOST_MEMORY))
    monkeypatch.setattr(node_gpus, "read_gpus", lambda: ([], "none (test)"))


def capacity(tree: str | Path, **kw: object) -> parsing.Capacity:
    root = tree if isinstance(tree, Path) else FIXTURES / tree
    kw.setdefault("affinity", ())
    return node_capacity.read_capacity(root=root, **kw)  # type: ignore[arg-type]


# read_capacity on fixture trees


@pytest.mark.usefixtures("fake_host")
def test_v2_container_limits() -> None:
    cap = capacity("v2")
    assert (cap.cpus, cap.memory, cap.cpuset) == (1.0, GIB, (0, 1))
    assert cap.source["cpus"] == "cgroup2 cpu.max /"
    assert cap.source["memory"] == "cgroup2 memory.max /"
    assert cap.source["cpuset"] == "cgroup2 cpuset.cpus.effective /"
    assert cap.source["cgroup"] == "v2"
    assert (cap.gpus, cap.gpu_memory) == (0, 0)


@pytest.mark.usefixtures("fake_host")
def test_v2_unlimited_falls_back_to_the_host() -> None:
    cap = capacity("v2-unlimited")
    assert (cap.cpus, cap.memory, cap.cpuset) == (HOST_CPUS, HOST_MEMORY, tuple(range(HOST_CPUS)))
    assert cap.source["cpus"] == cap.source["memory"] == cap.source["cpuset"] == "host"


@pytest.mark.usefixtures("fake_host")
def test_v2_nested_path_reads_the_process_own_cgroup_and_its_parents() -> None:
    cap = capacity("v2-nested")
    # /docker/abc: 2.5 cores (its parent /docker allows 4), cpus 2-5, 512 MiB (parent: 8 GiB)
    assert (cap.cpus, cap.memory, cap.cpuset) == (2.5, 512 * MIB, (2, 3, 4, 5))
    assert cap.source["cpus"] == "cgroup2 cpu.max /docker/abc"
    assert cap.source["memory"] == "cgroup2 memory.max /docker/abc"
    assert cap.source["cpuset"] == "cgroup2 cpuset.cpus.effective /docker/abc"


@pytest.mark.usefixtures("fake_host")
def test_v2_nested_parent_limit_wins_when_more_restrictive(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "v2-nested", root)
    (root / "sys/fs/cgroup/docker/abc/memory.max").write_text("max\n")
    (root / "sys/fs/cgroup/docker/cpu.max").write_text("150000 100000\n")
    cap = capacity(root)
    assert (cap.cpus, cap.memory) == (1.5, 8 * GIB)
    assert cap.source["cpus"] == "cgroup2 cpu.max /docker"
    assert cap.source["memory"] == "cgroup2 memory.max /docker"


@pytest.mark.usefixtures("fake_host")
def test_v1_comounted_controllers_and_a_nested_path_absent_under_the_mount() -> None:
    # /proc/self/cgroup names /docker/abc123, but the bind-mounted hierarchy's root is the
    # container's own cgroup: the limits are read at the mount root.
    cap = capacity("v1")
    assert (cap.cpus, cap.memory, cap.cpuset) == (1.5, 2 * GIB, (0, 1, 2, 3))
    assert cap.source["cpus"] == "cgroup1 cpu.cfs_quota_us /"
    assert cap.source["memory"] == "cgroup1 memory.limit_in_bytes /"
    assert cap.source["cpuset"] == "cgroup1 cpuset.effective_cpus /"
    assert cap.source["cgroup"] == "v1"


@pytest.mark.usefixtures("fake_host")
def test_v1_unlimited_falls_back_to_the_host() -> None:
    cap = capacity("v1-unlimited")
    assert (cap.cpus, cap.memory) == (HOST_CPUS, HOST_MEMORY)
    assert cap.source["cpus"] == cap.source["memory"] == "host"


@pytest.mark.usefixtures("fake_host")
def test_v1_memory_limit_on_a_parent_of_the_process_cgroup() -> None:
    cap = capacity("v1-nested")
    assert (cap.cpus, cap.memory, cap.cpuset) == (6.0, 3 * GIB, tuple(range(6)))
    assert cap.source["memory"] == "cgroup1 memory.limit_in_bytes /process_api"
    assert cap.source["cpus"] == "cgroup1 cpuset.cpus /"


@pytest.mark.usefixtures("fake_host")
@pytest.mark.parametrize("tree", ["v2", "v1"])
def test_configured_limits_win_when_lower(tree: str) -> None:
    cap = capacity(tree, configured_cpus=0.5, configured_memory=256 * MIB)
    assert (cap.cpus, cap.memory) == (0.5, 256 * MIB)
    assert cap.source["cpus"] == cap.source["memory"] == "configured"
    higher = capacity(tree, configured_cpus=32.0, configured_memory=32 * GIB)
    assert higher.cpus == capacity(tree).cpus and higher.memory == capacity(tree).memory


@pytest.mark.usefixtures("fake_host")
def test_cpu_affinity_narrows_the_cpuset() -> None:
    assert capacity("v1", affinity={0, 1}).cpuset == (0, 1)
    cap = capacity("v1", affinity={2, 9})
    assert (cap.cpus, cap.cpuset) == (1.0, (2,))
    assert cap.source["cpus"] == "cgroup1 cpuset.effective_cpus / & sched_getaffinity"
    cap = capacity("v2-unlimited", affinity={0, 1, 2})
    assert (cap.cpus, cap.source["cpus"]) == (3.0, "sched_getaffinity")


@pytest.mark.usefixtures("fake_host")
def test_no_cgroup_at_all_gives_the_host(tmp_path: Path) -> None:
    cap = capacity(tmp_path)
    assert (cap.cpus, cap.memory) == (HOST_CPUS, HOST_MEMORY)
    assert cap.source["cgroup"] == "none found"


@pytest.mark.usefixtures("fake_host")
def test_unreadable_and_malformed_files_fall_back_and_are_recorded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "v2", root)
    (root / "sys/fs/cgroup/cpu.max").unlink()
    (root / "sys/fs/cgroup/cpu.max").mkdir()  # reading it raises IsADirectoryError
    (root / "sys/fs/cgroup/memory.max").write_text("lots\n")
    (root / "proc/self/cgroup").unlink()
    cap = capacity(root)
    assert (cap.cpus, cap.memory) == (2.0, HOST_MEMORY)  # the cpuset 0-1 still limits cpus
    assert "cpu.max: IsADirectoryError" in cap.source["unreadable"]
    assert "memory.max: ValueError" in cap.source["unreadable"]


def test_gpus_counted_in_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = parsing.parse_nvidia_smi((FIXTURES / "nvidia-smi.csv").read_text())
    monkeypatch.setattr(node_gpus, "read_gpus", lambda: (gpus, "nvidia-smi"))
    cap = capacity("v2")
    assert (cap.gpus, cap.gpu_memory, cap.source["gpus"]) == (3, 81559 * MIB, "nvidia-smi")


# GPUs through nvidia-smi


CAT, SLEEP = shutil.which("cat"), shutil.which("sleep")  # resolved before PATH is replaced


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH holding only a fake nvidia-smi, and no pynvml."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.setenv("PATH", str(tmp_path))
    yield tmp_path / "nvidia-smi"


def write_script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_read_gpus_parses_nvidia_smi(fake_smi: Path) -> None:
    write_script(fake_smi, f"{CAT} {FIXTURES / 'nvidia-smi.csv'}")
    gpus, source = node_gpus.read_gpus()
    assert source == "nvidia-smi"
    assert [g.index for g in gpus] == [0, 1, 2]


def test_read_gpus_failure_means_no_gpus(fake_smi: Path) -> None:
    write_script(fake_smi, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    gpus, source = node_gpus.read_gpus()
    assert gpus == [] and source.startswith("none (nvidia-smi failed")


def test_read_gpus_hung_nvidia_smi_means_no_gpus(
    fake_smi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_gpus, "NVIDIA_SMI_TIMEOUT", 0.2)
    write_script(fake_smi, f"exec {SLEEP} 30")
    assert node_gpus.read_gpus() == ([], "none (nvidia-smi failed: TimeoutExpired)")


def test_read_gpus_without_any_tool(fake_smi: Path) -> None:
    assert node_gpus.read_gpus() == ([], "none (no pynvml, no nvidia-smi)")


# oom_kill counter


@pytest.mark.parametrize(
    ("tree", "count"),
    [("v2", 2), ("v2-nested", 1), ("v1", 3), ("v1-nested", 0), ("v1-unlimited", None)],
)
def test_oom_kill_count(tree: str, count: int | None) -> None:
    assert cgroup.OomKillCounter(FIXTURES / tree).read() == count


def test_oom_kill_count_none_without_cgroup(tmp_path: Path) -> None:
    assert cgroup.OomKillCounter(tmp_path).read() is None


# UsageProbe on fixture cgroups


@pytest.mark.usefixtures("fake_host")
def test_usage_probe_reads_a_limited_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "v2", root)
    usage_probe = usage.UsageProbe(root=root)
    assert usage_probe.mode == "cgroup"
    first = usage_probe.sample()
    assert first.cpus == 0.0
    assert first.memory == 260 * MIB  # memory.current less inactive_file
    assert usage_probe.cpu_seconds == 12.5
    (root / "sys/fs/cgroup/cpu.stat").write_text("usage_usec 14500000\n")
    assert usage_probe.sample().cpus > 0
    assert usage_probe.cpu_seconds == 14.5


@pytest.mark.usefixtures("fake_host")
def test_usage_probe_v1_cgroup_counters() -> None:
    usage_probe = usage.UsageProbe(root=FIXTURES / "v1")
    assert usage_probe.mode == "cgroup"
    assert usage_probe.sample().memory == 480 * MIB
    assert usage_probe.cpu_seconds == 7.25


@pytest.mark.usefixtures("fake_host")
def test_usage_probe_unlimited_cgroup_measures_the_process_tree() -> None:
    usage_probe = usage.UsageProbe(root=FIXTURES / "v2-unlimited")
    assert (usage_probe.mode, usage_probe.root_pid) == ("tree", os.getpid())


# real processes on this machine

CHILD = """
import sys, time
sys.stdin.readline()                       # wait until the test has taken its first sample
while time.process_time() < 0.5:           # burn about 0.5 s of CPU
    pass
block = bytearray(b"x") * (100 * 2**20)    # 100 MB, every page touched
print("ready", flush=True)
if sys.argv[1] == "stay":
    sys.stdin.readline()
"""


def spawn(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_usage_probe_tree_sees_a_child_burn_cpu_and_grow() -> None:
    usage_probe = usage.UsageProbe(root_pid=os.getpid())
    assert usage_probe.mode == "tree"
    child = spawn("stay")
    try:
        before = usage_probe.sample()
        assert before.cpus == 0.0
        seconds_before = usage_probe.cpu_seconds
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        after = usage_probe.sample()
        assert after.cpus > 0
        assert usage_probe.cpu_seconds is not None and seconds_before is not None
        assert usage_probe.cpu_seconds - seconds_before >= 0.5
        assert after.memory >= before.memory + 90 * MIB
        assert usage.TreeMemory(child.pid).sample() >= 100 * MIB
    finally:
        child.kill()
        child.communicate()  # waits, and closes the pipes


def test_usage_probe_counts_a_child_that_ended_between_samples() -> None:
    usage_probe = usage.UsageProbe(root_pid=os.getpid())
    child = spawn("exit")
    usage_probe.sample()
    seconds_before = usage_probe.cpu_seconds
    child.communicate("go\n")  # runs, exits, is reaped: its time moves into our children time
    usage_probe.sample()
    assert usage_probe.cpu_seconds is not None and seconds_before is not None
    assert usage_probe.cpu_seconds - seconds_before >= 0.5


def test_tree_memory_of_a_child_and_after_it_is_gone() -> None:
    mine = usage.TreeMemory(os.getpid(), rescan_s=0.0)  # finds the tree on every sample
    before = mine.sample()
    child = spawn("stay")
    theirs = usage.TreeMemory(child.pid)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        assert theirs.sample() >= 100 * MIB  # the known member, read again between rescans
        assert mine.sample() >= before + 90 * MIB  # the new child, found by the rescan
    finally:
        child.kill()
        child.communicate()  # waits, and closes the pipes
    assert theirs.sample() == 0


def test_read_capacity_on_this_machine_is_sane() -> None:
    cap = node_capacity.read_capacity()
    host_cpus, host_memory = node_capacity.host_resources()
    assert 0 < cap.cpus <= host_cpus
    assert 0 < cap.memory <= host_memory
    assert cap.cpuset and set(cap.cpuset) <= set(os.sched_getaffinity(0))
    assert {"cpus", "memory", "cpuset", "gpus", "cgroup"} <= set(cap.source)
