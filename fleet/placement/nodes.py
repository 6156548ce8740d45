"""The live nodes as arrays, a job's request as a vector, and the filter stage: what fits where.

Everything here is pure (numpy and the stdlib): the master builds a `NodeView` from the node
reports it read, the simulator from its own bookkeeping, and both ask the same questions.

Resources are columns, one per kind of `fleet.resources.KINDS`, in that order (`RESOURCES`), in
the units people write: CPUs in cores, memory in bytes, GPUs as a count, and GPU memory as the
free bytes on the node's best GPU. Reservations add only to the reserved kinds' columns
(`ALLOCATED`): GPU memory is a property of the device, not something fleet hands out, so a
request's `gpu_memory` is a filter ("a GPU with this much free"), nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from fleet.resources import KIND, KINDS, NAMES, Resources

T = TypeVar("T")

RESOURCES = NAMES
CPUS, MEMORY, GPUS, GPU_MEMORY = (NAMES.index(n) for n in ("cpus", "memory", "gpus", "gpu_memory"))
#: The columns that reservations add to (and that load is measured on), as an index array.
ALLOCATED = np.array([i for i, k in enumerate(KINDS) if k.reserved], dtype=np.intp)
#: 1.0 on the reserved columns, 0.0 elsewhere: adds a request to reservations in one step.
_RESERVED_MASK = np.array([1.0 if k.reserved else 0.0 for k in KINDS])
#: Slack for sums of fractional CPUs (0.1 + 0.2 > 0.3); memory is whole bytes.
EPS = np.array([k.slack for k in KINDS])
#: A node with less than half an inside unit free of a kind every job asks for has no room.
_ROOM = np.array([0.5 / k.scale if k.always else -np.inf for k in KINDS])


def quantity(resource: str, value: Any) -> float:
    """A resource amount as a float; memory may be written `2Gi`. Raises ValueError."""
    return float(KIND[resource].parse(value))


def amount(resource: str, value: float) -> str:
    """`6Gi`, `2 cpus`, `1 gpus`: an amount, with the unit a count needs."""
    return KIND[resource].amount(value)


def describe(resource: str, value: float) -> str:
    """`6Gi memory`, `2 cpus`, `16Gi GPU memory`: an amount of a resource as a person reads it."""
    return KIND[resource].describe(value)


def _vector(mapping: Mapping[str, Any] | None) -> list[float]:
    mapping = mapping or {}
    return [quantity(r, mapping.get(r)) for r in RESOURCES]


@dataclass(frozen=True, init=False)
class Request:
    """What one job asks for, in the units people write, and the node labels it insists on.

    `Request(2, 4 * GI)` gives amounts in `RESOURCES` order, `Request(cpus=2, gpu_memory=...)`
    by name; kinds not given are 0. The master builds one from a `Resources` value (`of`).
    """

    amounts: tuple[float, ...]
    node_selector: Mapping[str, str]

    def __init__(
        self, *amounts: float, node_selector: Mapping[str, str] | None = None, **named: float
    ) -> None:
        if len(amounts) > len(RESOURCES):
            raise TypeError(f"at most {len(RESOURCES)} amounts ({', '.join(RESOURCES)})")
        values = [*map(float, amounts), *(0.0,) * (len(RESOURCES) - len(amounts))]
        for name, value in named.items():
            if name not in KIND:
                raise TypeError(f"unknown resource {name!r}; known: {', '.join(RESOURCES)}")
            values[RESOURCES.index(name)] = float(value)
        object.__setattr__(self, "amounts", tuple(values))
        object.__setattr__(self, "node_selector", dict(node_selector or {}))

    @classmethod
    def of(cls, resources: Resources, node_selector: Mapping[str, str] | None = None) -> Request:
        """The request for a job asking `resources` (the one value, parsed once)."""
        request = cls.__new__(cls)  # the vector has every kind already: no checks to make
        object.__setattr__(request, "amounts", resources.vector())
        object.__setattr__(request, "node_selector", dict(node_selector or {}))
        return request

    @classmethod
    def from_resources(
        cls, resources: Mapping[str, Any], node_selector: Mapping[str, str] | None = None
    ) -> Request:
        """From a spec's `resources` mapping; memory may be bytes or `2Gi`, None means 0."""
        return cls.of(Resources.parse(resources), node_selector)

    @cached_property
    def _vec(self) -> np.ndarray:
        vec = np.array(self.amounts, dtype=np.float64)
        vec.flags.writeable = False
        return vec

    def vector(self) -> np.ndarray:
        """(k,) float64 in `RESOURCES` order; read-only (computed once)."""
        return self._vec

    def amount(self, name: str) -> float:
        """How much of kind `name` the job asks for."""
        return self.amounts[RESOURCES.index(name)]

    def describe(self) -> str:
        parts = [describe(r, a) for r, a in zip(RESOURCES, self.amounts, strict=True) if a > 0]
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True, eq=False)
class NodeView:
    """One snapshot of the live nodes, as arrays of shape (n, k) in `RESOURCES` order.

    A view is never changed in place: `with_reserved` returns a new one, so a decision made on a
    view can be explained later from that same view. Arrays are float64; an array with fewer
    columns (written before a kind existed) has 0 of the kinds it leaves out.
    """

    names: tuple[str, ...]
    capacity: np.ndarray
    reserved: np.ndarray
    usage: np.ndarray
    labels: tuple[dict[str, str], ...] = ()
    # What depends on capacity and labels only: shared by the copies `with_reserved` makes.
    _static: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n, k = len(self.names), len(RESOURCES)
        for name in ("capacity", "reserved", "usage"):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.ndim == 2 and array.shape[0] == n and array.shape[1] < k:
                array = np.pad(array, ((0, 0), (0, k - array.shape[1])))
            if array.shape != (n, k):
                array = array.reshape(n, k)
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
        reserved *= _RESERVED_MASK  # nothing is held of a kind fleet does not reserve
        labels = tuple({str(k): str(v) for k, v in (r.get("labels") or {}).items()} for r in reports)
        return cls(names, capacity, reserved, usage, labels)

    @classmethod
    def empty(cls) -> NodeView:
        shape = (0, len(RESOURCES))
        return cls((), np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, kept for this view and the copies `with_reserved` and `with_load` make:
        only for what depends on capacity and labels alone (placement's per-fleet constants)."""
        try:
            return self._static[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._static[key] = compute()
            return value

    def with_load(self, reserved: np.ndarray, usage: np.ndarray) -> NodeView:
        """The same nodes with other reservations and usage (capacity and labels unchanged)."""
        return NodeView(self.names, self.capacity, reserved, usage, self.labels, self._static)

    @cached_property
    def _free(self) -> np.ndarray:
        free: np.ndarray = self.capacity - self.reserved
        free.flags.writeable = False
        return free

    def free(self) -> np.ndarray:
        """capacity − reserved, (n, k); read-only. Negative where a node is over-committed."""
        return self._free

    def inverse_capacity(self) -> np.ndarray:
        """(n, k) 1 / capacity on the allocated columns; 0 where a node has none (fractions of
        nothing are 0) and on the columns reservations do not add to."""

        def compute() -> np.ndarray:
            cap = self.capacity * _RESERVED_MASK
            inv: np.ndarray = np.divide(1.0, cap, out=np.zeros_like(cap), where=cap > 0)
            return inv

        return self.cached("inv", compute)

    def index(self, name: str) -> int | None:
        """The row of the node called `name`, or None."""
        lookup = self.cached("index", lambda: {n: i for i, n in enumerate(self.names)})
        return lookup.get(name)

    def selector_mask(self, selector: Mapping[str, str] | None) -> np.ndarray | None:
        """Bool (n,): the nodes whose labels match every pair of `selector`; None when it is empty."""
        if not selector:
            return None
        pairs = tuple(sorted(selector.items()))
        return self.cached(
            ("sel", pairs),
            lambda: np.fromiter(
                (all(lbl.get(k) == v for k, v in pairs) for lbl in self.labels),
                dtype=bool,
                count=len(self.names),
            ),
        )

    def with_reserved(self, index: int, request: Request) -> NodeView:
        """A copy with `request` reserved on node `index` (usage is what was measured: unchanged)."""
        reserved = self.reserved.copy()
        reserved[index] += request.vector() * _RESERVED_MASK
        return self.with_load(reserved, self.usage)


def has_room(nodes: NodeView) -> bool:
    """Some node has some of every kind each job asks for (CPUs, memory) left unreserved."""
    return bool((nodes.free() > _ROOM).all(axis=1).any())


def fits(free: np.ndarray, need: np.ndarray) -> np.ndarray:
    """free ≥ need on every resource, row by row (with float slack)."""
    ok: np.ndarray = (free + EPS >= need).all(axis=-1)
    return ok


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
