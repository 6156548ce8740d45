"""Which of a node's CPUs (and GPUs) a job is pinned to. Pure bookkeeping, no I/O.

A job asking for `c` CPUs gets ceil(c) cores of the node's cpuset, the least shared ones first,
so two 1-CPU jobs on a 2-core node do not fight over one core while the other idles. Cores are
shared only when the node's reservations are fractional or its cpuset is smaller than its quota.

Jobs are pinned only when the node's cores are its own: a cpuset no larger than its CPU quota
(a local node on its own cores, a container with --cpuset-cpus). A node limited by a quota
alone (a container with --cpus 1 on a 16-core host) shares every core with the rest of the
machine; pinning its job to one of them would only stop the kernel from moving it to an idle
core, so such jobs are left unpinned, with their thread pools still sized to their CPUs.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence


class Pinning:
    def __init__(self, cpuset: Sequence[int], gpu_ids: Sequence[int] = (),
                 cpus: float | None = None) -> None:
        """`cpus`: the node's CPU capacity (its quota); None means the cpuset is all it has."""
        dedicated = cpus is None or len(cpuset) <= math.ceil(cpus - 1e-9)
        self.cpuset = tuple(cpuset) if dedicated else ()
        self.gpu_ids = tuple(gpu_ids)
        self._cpu_use: Counter[int] = Counter({c: 0 for c in self.cpuset})
        self._gpu_use: Counter[int] = Counter({g: 0 for g in self.gpu_ids})
        self._lock = threading.Lock()

    def take(self, cpus: float, gpus: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(cores, gpu ids) for a job; give them back with `give_back`."""
        with self._lock:
            want = min(len(self.cpuset), max(1, math.ceil(cpus - 1e-9))) if self.cpuset else 0
            cores = _least_used(self._cpu_use, want)
            gpu_ids = _least_used(self._gpu_use, min(gpus, len(self.gpu_ids)))
            return cores, gpu_ids

    def give_back(self, cores: Sequence[int], gpu_ids: Sequence[int] = ()) -> None:
        with self._lock:
            for c in cores:
                self._cpu_use[c] -= 1
            for g in gpu_ids:
                self._gpu_use[g] -= 1


def _least_used(use: Counter[int], n: int) -> tuple[int, ...]:
    chosen = tuple(sorted(sorted(use), key=lambda k: use[k])[:n])
    for k in chosen:
        use[k] += 1
    return tuple(sorted(chosen))
