"""The one resource value: parsed once, one integer unit inside, one wire shape, one vector."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.placement import NodeView, Request, feasible, has_room
from fleet.placement.nodes import ALLOCATED, EPS, RESOURCES
from fleet.resources import KINDS, NAMES, RESERVED, Resources
from fleet.spec import parse_spec
from fleet.store import records, registry
from fleet.store.jobstore import request_of

GI = 2**30


def test_parse_keeps_one_integer_unit_per_kind() -> None:
    r = Resources.parse({"cpus": 1.5, "memory": "2Gi", "gpus": 1, "gpu_memory": None})
    assert r.amounts[:4] == (1500, 2 * GI, 1, 0) and not any(r.amounts[4:])
    assert all(isinstance(a, int) for a in r.amounts)
    assert r.get("cpus") == 1.5 and r.get("memory") == 2 * GI


def test_parse_ignores_other_keys_and_counts_missing_as_zero() -> None:
    assert Resources.parse({"cpus": 2, "cpuset": [0, 1]}) == Resources.zero() + Resources.parse(
        {"cpus": 2})
    assert Resources.parse({"cpus": 2}).amounts[0] == 2000
    assert Resources.parse(None) == Resources.zero()


@pytest.mark.parametrize("bad", [{"cpus": -1}, {"cpus": "2"}, {"cpus": True}, {"memory": "2 lots"},
                                 {"cpus": float("nan")}])
def test_parse_refuses_what_is_not_an_amount(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Resources.parse(bad)


def test_wire_shape_is_the_stored_keys_of_the_reserved_kinds() -> None:
    r = Resources.parse({"cpus": 0.25, "memory": 512 * 2**20, "gpus": 2, "gpu_memory": "8Gi"})
    wire = r.to_wire()
    # stored records and the Lua steps keep today's keys; a kind added later joins them
    assert {k: wire[k] for k in ("cpus_m", "memory", "gpus")} == {
        "cpus_m": 250, "memory": 512 * 2**20, "gpus": 2}
    assert set(wire) == {k.wire for k in RESERVED}
    # a filter-only kind (GPU memory) does not travel: reservations never add up on it
    assert Resources.from_wire(wire) == r - Resources.parse({"gpu_memory": "8Gi"})


def test_add_sub_fits_and_total() -> None:
    a = Resources.parse({"cpus": 1, "memory": GI})
    b = Resources.parse({"cpus": 2, "memory": 2 * GI, "gpus": 1})
    assert (a + b) == Resources.parse({"cpus": 3, "memory": 3 * GI, "gpus": 1})
    assert (b - a) == Resources.parse({"cpus": 1, "memory": GI, "gpus": 1})
    assert a.fits(b) and not b.fits(a)
    assert Resources.total([a, b, a]) == a + b + a
    assert Resources.total([]) == Resources.zero()


def test_units_and_vector_are_in_the_units_people_write() -> None:
    r = Resources.parse({"cpus": 0.5, "memory": GI, "gpus": 1})
    assert r.units(RESERVED) == {k.name: {"cpus": 0.5, "memory": GI, "gpus": 1}.get(k.name, 0)
                                 for k in RESERVED}
    assert r.vector()[:4] == (0.5, float(GI), 1.0, 0.0) and not any(r.vector()[4:])
    assert r.describe() == "0.5 cpus, 1Gi memory, 1 gpus"


def test_every_consumer_derives_from_the_one_list_of_kinds() -> None:
    assert RESOURCES == NAMES == tuple(k.name for k in KINDS)
    assert EPS.shape == (len(KINDS),)
    assert [RESOURCES[i] for i in ALLOCATED] == [k.name for k in RESERVED]
    assert records.ALLOC_FIELDS == tuple(k.wire for k in RESERVED)


def test_spec_store_and_placement_agree_on_a_request() -> None:
    spec = parse_spec({"name": "j", "entrypoint": "workers.jobs.synthetic:noop",
                       "resources": {"cpus": 1.5, "memory": "1Gi", "gpus": 1,
                                     "gpu_memory": "4Gi"}}, allowlist=["workers.jobs"])
    value = spec.resources.value()
    assert request_of(spec) == value.to_wire()
    assert {k: request_of(spec)[k] for k in ("cpus_m", "memory", "gpus")} == {
        "cpus_m": 1500, "memory": GI, "gpus": 1}
    assert Request.of(value).vector().tolist()[:4] == [1.5, GI, 1, 4 * GI]
    # what the master reads back from an allocation entry is the same request, less the filter
    entry = records.alloc_entry(f'{{"attempt": 1, "incarnation": "i", "cpus_m": 1500, '
                                f'"memory": {GI}, "gpus": 1}}')
    assert Resources.from_wire(entry) == value - Resources.parse({"gpu_memory": "4Gi"})


def test_reserved_of_sums_allocation_entries_in_report_units() -> None:
    allocs = {"a": {"cpus_m": 1500, "memory": GI, "gpus": 1},
              "b": {"cpus_m": 250, "memory": GI, "gpus": 0}}
    held = registry.reserved_of(allocs)
    assert {k: held[k] for k in ("cpus", "memory", "gpus")} == {"cpus": 1.75, "memory": 2 * GI,
                                                                 "gpus": 1}
    assert registry.reserved_of({}) == {k.name: 0 for k in RESERVED}


def test_a_request_names_kinds_in_order_or_by_name() -> None:
    assert Request(1, GI).vector().tolist() == [1, GI] + [0] * (len(RESOURCES) - 2)
    assert Request(gpus=2, cpus=1).amount("gpus") == 2
    with pytest.raises(TypeError, match="unknown resource"):
        Request(disks=1)


def test_has_room_needs_cpus_and_memory_free_on_one_node() -> None:
    def nodes(*free: tuple[float, float]) -> NodeView:
        cap = np.array([[4, 4 * GI]] * len(free), dtype=np.float64)
        used = cap - np.array([[c, m] for c, m in free], dtype=np.float64)
        return NodeView(tuple(f"n{i}" for i in range(len(free))), cap, used, used)

    assert has_room(nodes((1, GI)))
    assert not has_room(nodes((0, GI), (1, 0)))  # each has one of them, neither both
    assert not has_room(NodeView.empty())


def test_a_view_with_fewer_columns_has_none_of_the_kinds_it_leaves_out() -> None:
    view = NodeView(("a",), np.array([[4, GI]]), np.zeros((1, 2)), np.zeros((1, 2)))
    assert view.capacity.shape == (1, len(RESOURCES))
    assert feasible(view, Request(1, GI)).tolist() == [True]
    assert feasible(view, Request(1, GI, 1)).tolist() == [False]
