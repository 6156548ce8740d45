"""Which cores a job is pinned to (workers/node/cores.py): pure bookkeeping."""

from __future__ import annotations

from workers.node.cores import Pinning


def test_jobs_on_a_node_with_its_own_cores_get_the_least_shared_ones() -> None:
    pin = Pinning((2, 3), cpus=2)
    first, _ = pin.take(1)
    second, _ = pin.take(1)
    assert {first, second} == {(2,), (3,)}
    pin.give_back(first)
    assert pin.take(1)[0] == first
    assert pin.take(4)[0] == (2, 3)  # never more cores than the node has


def test_fractional_jobs_share_a_core_only_when_they_must() -> None:
    pin = Pinning((0, 1), cpus=2)
    assert pin.take(0.5)[0] != pin.take(0.5)[0]
    assert len(pin.take(0.5)[0]) == 1


def test_a_node_limited_by_quota_alone_leaves_its_jobs_unpinned() -> None:
    # a container with --cpus 1 on a 16-core host: its cpuset is the host's
    pin = Pinning(tuple(range(16)), cpus=1)
    assert pin.take(1) == ((), ())
    # a quota of 1.5 on 2 cores: the cores are (almost) its own, ceil(1.5) = 2
    assert Pinning((0, 1), cpus=1.5).take(1)[0] in ((0,), (1,))


def test_gpus_are_handed_out_whatever_the_cpu_rule() -> None:
    pin = Pinning(tuple(range(16)), gpu_ids=(0, 1), cpus=1)
    assert pin.take(1, gpus=1) == ((), (0,))
    assert pin.take(1, gpus=1) == ((), (1,))
