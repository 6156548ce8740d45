"""The live nodes as arrays, a job's request as a vector, and the filter stage: what fits where.

Everything here is pure (numpy and the stdlib): the master builds a `NodeView` from the node
reports it read, the simulator from its own bookkeeping, and both ask the same questions.

Resources are columns, in `RESOURCES` order: CPUs in cores, memory in bytes, GPUs as a count, and
GPU memory as the free bytes on the node's best GPU. GPU memory is a property of the device, not
something fleet hands out, so reservations never add to that column: a request's `gpu_memory` is
a filter ("a GPU with this much free"), nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fleet.units import format_cpus, format_memory, parse_memory

RESOURCES = ("cpus", "memory", "gpus", "gpu_memory")
CPUS, MEMORY, GPUS, GPU_MEMORY = range(4)
#: How many leading columns reservations add to (and load is measured on): CPUs, memory, GPUs.
ALLOCATED_COLUMNS = 3
#: Slack for sums of fractional CPUs (0.1 + 0.2 > 0.3); memory is whole bytes.
EPS = np.array([1e-9, 0.5, 1e-9, 0.5])


def quantity(resource: str, value: Any) -> float:
    """A resource amount as a float; memory may be written `2Gi`. Raises ValueError."""
    if value is None:
        return 0.0
    if resource in ("memory", "gpu_memory"):
        return float(parse_memory(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return float(value)


def amount(resource: str, value: float) -> str:
    """`6Gi`, `2 cpus`, `1 gpus`: an amount, with the unit a count needs."""
    if resource in ("memory", "gpu_memory"):
        return format_memory(value)
    return f"{format_cpus(value)} {resource}"


def describe(resource: str, value: float) -> str:
    """`6Gi memory`, `2 cpus`, `16Gi GPU memory`: an amount of a resource as a person reads it."""
    if resource == "memory":
        return f"{amount(resource, value)} memory"
    if resource == "gpu_memory":
        return f"{amount(resource, value)} GPU memory"
    return amount(resource, value)


def _vector(mapping: Mapping[str, Any] | None) -> list[float]:
    mapping = mapping or {}
    return [quantity(r, mapping.get(r)) for r in RESOURCES]


@dataclass(frozen=True)
class Request:
    """What one job asks for, and the node labels it insists on."""

    cpus: float
    memory: float
    gpus: float = 0
    gpu_memory: float = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def _vec(self) -> np.ndarray:
        vec = np.array([self.cpus, self.memory, self.gpus, self.gpu_memory], dtype=np.float64)
        vec.flags.writeable = False
        return vec

    def vector(self) -> np.ndarray:
        """(4,) float64 in `RESOURCES` order; read-only (computed once)."""
        return self._vec

    @classmethod
    def from_resources(
        cls, resources: Mapping[str, Any], node_selector: Mapping[str, str] | None = None
    ) -> Request:
        """From a spec's `resources` mapping; memory may be bytes or `2Gi`, None means 0."""
        cpus, memory, gpus, gpu_memory = _vector(resources)
        return cls(cpus, memory, gpus, gpu_memory, dict(node_selector or {}))

    def describe(self) -> str:
        parts = [describe(r, a) for r, a in zip(RESOURCES, self.vector(), strict=True) if a > 0]
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True, eq=False)
class NodeView:
    """One snapshot of the live nodes, as arrays of shape (n, 4) in `RESOURCES` order.

    A view is never changed in place: `with_reserved` returns a new one, so a decision made on a
    view can be explained later from that same view. Arrays are float64.
    """

    names: tuple[str, ...]
    capacity: np.ndarray
    reserved: np.ndarray
    usage: np.ndarray
    labels: tuple[dict[str, str], ...] = ()
    # What depends on capacity and labels only: shared by the copies `with_reserved` makes.
    _static: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        for name in ("capacity", "reserved", "usage"):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.shape != (n, len(RESOURCES)):
                array = array.reshape(n, len(RESOURCES))
            object.__setattr__(self, name, array)
        if len(self.labels) != n:
            labels = tuple(self.labels) + ({},) * (n - len(self.labels))
            object.__setattr__(self, "labels", labels[:n])

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_reports(cls, reports: Sequence[Mapping[str, Any]]) -> NodeView:
        """From node reports: `{"node", "capacity", "reserved", "usage", "labels"}`.

        Missing keys count as 0 (or no labels); memory may be bytes or `2Gi`.
        """
        names = tuple(str(r["node"]) for r in reports)
        rows = [[_vector(r.get(part)) for r in reports] for part in ("capacity", "reserved", "usage")]
        shape = (len(reports), len(RESOURCES))
        capacity, reserved, usage = (np.array(x, dtype=np.float64).reshape(shape) for x in rows)
        reserved[:, GPU_MEMORY] = 0.0
        labels = tuple({str(k): str(v) for k, v in (r.get("labels") or {}).items()} for r in reports)
        return cls(names, capacity, reserved, usage, labels)

    @classmethod
    def empty(cls) -> NodeView:
        return cls((), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4)))

    @cached_property
    def _free(self) -> np.ndarray:
        free = self.capacity - self.reserved
        free.flags.writeable = False
        return free

    def free(self) -> np.ndarray:
        """capacity − reserved, (n, 4); read-only. Negative where a node is over-committed."""
        return self._free

    def inverse_capacity(self) -> np.ndarray:
        """1 / capacity on the allocated columns, 0 where a node has none: fractions of nothing are 0."""
        inv = self._static.get("inv")
        if inv is None:
            cap = self.capacity[:, :ALLOCATED_COLUMNS]
            inv = np.divide(1.0, cap, out=np.zeros_like(cap), where=cap > 0)
            self._static["inv"] = inv
        return inv

    def index(self, name: str) -> int | None:
        """The row of the node called `name`, or None."""
        lookup = self._static.get("index")
        if lookup is None:
            lookup = self._static["index"] = {n: i for i, n in enumerate(self.names)}
        return lookup.get(name)

    def selector_mask(self, selector: Mapping[str, str] | None) -> np.ndarray | None:
        """Bool (n,): the nodes whose labels match every pair of `selector`; None when it is empty."""
        if not selector:
            return None
        key = ("sel", tuple(sorted(selector.items())))
        mask = self._static.get(key)
        if mask is None:
            pairs = key[1]
            mask = np.fromiter(
                (all(lbl.get(k) == v for k, v in pairs) for lbl in self.labels),
                dtype=bool,
                count=len(self.names),
            )
            self._static[key] = mask
        return mask

    def with_reserved(self, index: int, request: Request) -> NodeView:
        """A copy with `request` reserved on node `index` (usage is what was measured: unchanged)."""
        reserved = self.reserved.copy()
        reserved[index, :ALLOCATED_COLUMNS] += request.vector()[:ALLOCATED_COLUMNS]
        return NodeView(self.names, self.capacity, reserved, self.usage, self.labels, self._static)


def fits(free: np.ndarray, need: np.ndarray) -> np.ndarray:
    """free ≥ need on every resource, row by row (with float slack)."""
    return (free + EPS >= need).all(axis=-1)


def feasible(nodes: NodeView, req: Request) -> np.ndarray:
    """Bool (n,): free ≥ request on EVERY resource, and the node's labels match the selector."""
    ok = fits(nodes.free(), req.vector())
    selector = nodes.selector_mask(req.node_selector)
    if selector is not None:
        ok &= selector
    return ok


def selector_text(selector: Mapping[str, str]) -> str:
    """A node selector as people read it and write it: `k=v,k2=v2`, keys sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def unfit_reason(nodes: NodeView, req: Request) -> str:
    """Why `req` fits on no node now, in one line a user can act on.

    Names the scarcest resource (the one the fewest nodes have enough of free, then the one
    furthest short) with the largest free amount and where it is: `needs 6Gi memory; largest free
    is 2Gi on node-3`. When every resource is free somewhere but never all on one node, it says so
    and names the node closest to fitting.
    """
    if len(nodes) == 0:
        return "no live nodes"
    rows = np.arange(len(nodes))
    scope = ""
    selector = nodes.selector_mask(req.node_selector)
    if selector is not None:
        text = selector_text(req.node_selector)
        if not selector.any():
            return f"no live node has labels {text}"
        rows = np.flatnonzero(selector)
        scope = f" among nodes with {text}"
    free = nodes.free()[rows]
    need = req.vector()
    enough = free + EPS >= need
    if enough.all(axis=1).any():
        return "fits now"
    short = [r for r in range(len(RESOURCES)) if need[r] > 0 and not enough[:, r].all()]
    # Scarcest: fewest nodes with enough, then largest need / best free.
    best_free = free.max(axis=0)
    ratio = [need[r] / max(best_free[r], 1e-12) for r in short]
    scarcest = min(range(len(short)), key=lambda k: (enough[:, short[k]].sum(), -ratio[k]))
    r = short[scarcest]
    name = RESOURCES[r]
    if not enough[:, r].any():
        where = int(rows[int(np.argmax(free[:, r]))])
        largest = max(float(free[:, r].max()), 0.0)
        return (
            f"needs {describe(name, need[r])}; largest free is {amount(name, largest)} "
            f"on {nodes.names[where]}{scope}"
        )
    # Each resource is free somewhere, never all together: name the node closest to fitting.
    deficit = np.where(enough, 0.0, (need - free) / np.maximum(need, 1e-12)).sum(axis=1)
    k = int(np.argmin(deficit))
    has = ", ".join(
        describe(RESOURCES[c], max(float(free[k, c]), 0.0)) for c in range(len(RESOURCES)) if need[c] > 0
    )
    return (
        f"needs {req.describe()} on one node; no node has all of it free{scope} "
        f"(closest: {nodes.names[int(rows[k])]} with {has} free)"
    )


def never_fits(nodes: NodeView, req: Request) -> tuple[str, str] | None:
    """(field, reason) when `req` exceeds every node's CAPACITY, so waiting cannot help.

    Judged among the nodes whose labels match the selector. None when some node could hold the
    request when empty, when there are no nodes at all, or when no node carries the labels asked
    for: nodes come and go, and an empty fleet or a missing label is not the job's fault.
    """
    if len(nodes) == 0:
        return None
    rows = np.arange(len(nodes))
    scope = ""
    selector = nodes.selector_mask(req.node_selector)
    if selector is not None:
        if not selector.any():
            return None
        rows = np.flatnonzero(selector)
        scope = f" with {selector_text(req.node_selector)}"
    capacity = nodes.capacity[rows]
    need = req.vector()
    enough = capacity + EPS >= need
    if enough.all(axis=1).any():
        return None
    for r, name in enumerate(RESOURCES):
        if need[r] > 0 and not enough[:, r].any():
            k = int(np.argmax(capacity[:, r]))
            return (
                f"resources.{name}",
                f"needs {describe(name, need[r])}; the largest node{scope} has "
                f"{amount(name, float(capacity[k, r]))} "
                f"({nodes.names[int(rows[k])]})",
            )
    return (
        "resources",
        f"needs {req.describe()} on one node; no node{scope} has all of that "
        f"(sizes: {_sizes(nodes, rows, need)})",
    )


def _sizes(nodes: NodeView, rows: np.ndarray, need: np.ndarray) -> str:
    parts = []
    for i in rows[:4]:
        has = " ".join(
            describe(RESOURCES[c], float(nodes.capacity[i, c])) for c in range(len(RESOURCES)) if need[c] > 0
        )
        parts.append(f"{nodes.names[int(i)]}: {has}")
    more = f", and {len(rows) - 4} more" if len(rows) > 4 else ""
    return "; ".join(parts) + more
