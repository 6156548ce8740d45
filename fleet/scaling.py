"""`fleet scale worker=N` decided as a pure plan; a driver applies it (decide, then act).

Nodes to remove are chosen idle first, then newest first, so a scale-down disturbs as little
running work as it can; a removed node is drained (no new job, finishes what it runs) before it
stops.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet.errors import SpecError

NODE_PREFIX = "node"


@dataclass(frozen=True)
class ScalePlan:
    add: tuple[str, ...]
    remove: tuple[str, ...]


def parse_target(text: str) -> int:
    """`worker=4` (the compose service name) or a bare `4`."""
    match = re.fullmatch(r"\s*(?:workers?\s*=\s*)?(\d{1,4})\s*", text)
    if not match:
        raise SpecError("target", f"expected worker=N with N a whole number, got {text!r}")
    return int(match.group(1))


def node_index(node: str) -> int:
    match = re.fullmatch(rf"{NODE_PREFIX}-(\d+)", node)
    return int(match.group(1)) if match else 0


def plan_scale(target: int, observed: Mapping[str, int]) -> ScalePlan:
    """`observed`: node id -> jobs it runs (draining nodes excluded). New ids never reuse a
    number still observed, so a new node cannot be mistaken for one that is leaving."""
    if target < 0:
        raise SpecError("target", "must be >= 0")
    current = sorted(observed, key=node_index)
    if target >= len(current):
        taken = {node_index(n) for n in current}
        fresh: list[str] = []
        i = 1
        while len(fresh) < target - len(current):
            if i not in taken:
                fresh.append(f"{NODE_PREFIX}-{i}")
            i += 1
        return ScalePlan(add=tuple(fresh), remove=())
    order = sorted(current, key=lambda n: (observed[n], -node_index(n)))
    return ScalePlan(add=(), remove=tuple(order[: len(current) - target]))


def cores_for(index: int, cpus: float, host_cores: Sequence[int]) -> list[int]:
    """The cores local node number `index` (1-based) is pinned to: its own where there are enough."""
    import math

    want = max(1, math.ceil(cpus))
    n = len(host_cores)
    if want >= n:
        return list(host_cores)
    start = ((index - 1) * want) % n
    return [host_cores[(start + k) % n] for k in range(want)]
