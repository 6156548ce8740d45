"""One resource value: what a job asks for, and what a node has, holds or uses, in one shape.

The kinds are listed once, in `KINDS`; everything else (the spec's parsing, the stored request,
a node's allocation entries and capacity, placement's columns, the worker's view of what a job
was given) asks this module instead of naming them. Adding a kind is one `Kind` here, and the
placement column and the reserve step follow from it.

Three shapes, one value:

- *units people write*: a spec's `resources`, a node report: `{"cpus": 1.5, "memory": "2Gi"}`;
- *inside*: one integer per kind in its smallest unit (milli-CPUs, bytes, whole GPUs), so sums
  are exact and agree with the reserve step's own arithmetic;
- *on the wire*: `{"cpus_m": 1500, "memory": 2147483648, "gpus": 0}`, only the kinds fleet
  reserves (the keys stored requests, allocation entries and capacities carry, and Lua compares).

Pure and a leaf: stdlib and `fleet.units` only, so a job's process may import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.units import format_cpus, format_memory, parse_memory


@dataclass(frozen=True)
class Kind:
    """One kind of resource and how each shape spells it."""

    name: str  # the key in a spec, a node report, and placement's column name
    wire: str  # the key of a stored request, allocation or capacity; "": not reserved
    scale: int = 1  # inside units per unit people write: 1000 milli-CPUs per CPU
    size: bool = False  # written as a size (`512Mi`) and counted in whole bytes
    label: str = ""  # what follows a size when it is described: `6Gi memory`
    limit: int = 2**60  # the largest inside amount a stored record may hold
    #: Every job asks for some (the spec requires it): a stored reservation without it is
    #: malformed rather than "none", and a node without any free takes no job.
    always: bool = False

    @property
    def reserved(self) -> bool:
        """Whether reservations add up on this kind (else it is a filter: "a GPU this big")."""
        return bool(self.wire)

    @property
    def slack(self) -> float:
        """Tolerance of placement's float sums, in units people write (0.1 + 0.2 > 0.3)."""
        return 0.5 if self.size else 1e-9

    def parse(self, value: Any) -> float:
        """An amount as people write it, in their units (a size in whole bytes); None is 0.
        Raises ValueError."""
        if value is None:
            return 0
        if self.size:
            return parse_memory(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"expected a non-negative number, got {value!r}")
        return float(value)

    def amount(self, value: float) -> str:
        """`6Gi`, `2 cpus`, `1 gpus`: an amount, with the unit a count needs."""
        if self.size:
            return format_memory(value)
        return f"{format_cpus(value)} {self.name}"

    def describe(self, value: float) -> str:
        """`6Gi memory`, `2 cpus`, `16Gi GPU memory`: an amount as a person reads it."""
        return f"{self.amount(value)} {self.label}" if self.label else self.amount(value)


#: Every kind, in placement's column order. Reserved kinds may sit anywhere; a new one goes last.
KINDS: tuple[Kind, ...] = (
    Kind("cpus", "cpus_m", scale=1000, limit=1024 * 1000 * 64, always=True),
    Kind("memory", "memory", size=True, label="memory", always=True),
    Kind("gpus", "gpus", limit=1024),
    # GPU memory is a property of the device, not something fleet hands out: a filter only.
    Kind("gpu_memory", "", size=True, label="GPU memory"),
)
NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
KIND: dict[str, Kind] = {k.name: k for k in KINDS}
RESERVED: tuple[Kind, ...] = tuple(k for k in KINDS if k.reserved)
_SCALES = tuple(k.scale for k in KINDS)
_WIRE = tuple(k.wire for k in KINDS)


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of every kind, one integer each in its inside unit, in `KINDS` order.

    Immutable; `+` and `-` give new values. Parse it once where it enters (a spec, a report, a
    stored record) and ask it for the shape you need.
    """

    amounts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.amounts) != len(KINDS):
            raise ValueError(f"expected {len(KINDS)} amounts ({', '.join(NAMES)})")

    @classmethod
    def zero(cls) -> Resources:
        return cls((0,) * len(KINDS))

    @classmethod
    def parse(cls, mapping: Mapping[str, Any] | None) -> Resources:
        """From units people write (a spec's `resources`, a node's capacity): missing or None is
        0, memory may be `2Gi`, other keys are ignored. ValueError names the kind."""
        mapping = mapping or {}
        amounts = []
        for k in KINDS:
            try:
                value = k.parse(mapping.get(k.name))
            except ValueError as exc:
                raise ValueError(f"{k.name}: {exc}") from None
            amounts.append(round(value * k.scale))
        return cls(tuple(amounts))

    @classmethod
    def from_wire(cls, mapping: Mapping[str, Any]) -> Resources:
        """From a stored request, allocation entry or capacity (already validated: numbers)."""
        return cls(tuple([int(mapping.get(w, 0)) if w else 0 for w in _WIRE]))

    def to_wire(self) -> dict[str, int]:
        """`{"cpus_m": 1500, "memory": ..., "gpus": 0}`: the reserved kinds, every one present."""
        return {k.wire: a for k, a in zip(KINDS, self.amounts, strict=True) if k.wire}

    def get(self, name: str) -> float:
        """The amount of kind `name` in units people write: CPUs as a float, bytes, GPUs."""
        k = KIND[name]
        a = self.amounts[NAMES.index(name)]
        return a / k.scale if k.scale != 1 else a

    def units(self, kinds: Iterable[Kind] = KINDS) -> dict[str, float]:
        """`{"cpus": 1.5, "memory": 2147483648, ...}` for `kinds`: a report's shape."""
        return {k.name: self.get(k.name) for k in kinds}

    def vector(self) -> tuple[float, ...]:
        """Every kind in `KINDS` order, in units people write: placement's vector."""
        return tuple([a / scale for a, scale in zip(self.amounts, _SCALES, strict=True)])

    def fits(self, room: Resources) -> bool:
        """Whether this much fits in `room` on every kind."""
        return all(a <= b for a, b in zip(self.amounts, room.amounts, strict=True))

    def __add__(self, other: Resources) -> Resources:
        return Resources(tuple(a + b for a, b in zip(self.amounts, other.amounts, strict=True)))

    def __sub__(self, other: Resources) -> Resources:
        return Resources(tuple(a - b for a, b in zip(self.amounts, other.amounts, strict=True)))

    @classmethod
    def total(cls, values: Iterable[Resources]) -> Resources:
        out = cls.zero()
        for value in values:
            out = out + value
        return out

    def describe(self) -> str:
        """`2 cpus, 4Gi memory`: the kinds asked for, as a person reads them."""
        parts = [KIND[n].describe(v) for n, v in zip(NAMES, self.vector(), strict=True) if v > 0]
        return ", ".join(parts) or "nothing"
