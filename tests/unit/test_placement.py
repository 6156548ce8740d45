"""Placement: filter, score, choose and explain, on hand-made node states."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.placement import (
    POLICIES,
    RESOURCES,
    NodeView,
    PolicyState,
    Request,
    choose,
    feasible,
    never_fits,
    score,
    unfit_reason,
)
from fleet.placement.policies import spread_load

GI = 2**30


def view(*nodes: dict) -> NodeView:
    """Nodes as {"cpus", "memory" (GiB), "gpus", "used": {...}, "usage": {...}, "labels"}."""
    reports = []
    for k, node in enumerate(nodes, start=1):

        def res(part: dict) -> dict:
            out = dict(part)
            for key in ("memory", "gpu_memory"):
                if key in out:
                    out[key] = out[key] * GI
            return out

        capacity = {r: node.get(r, 0) for r in ("cpus", "memory", "gpus", "gpu_memory")}
        reports.append(
            {
                "node": node.get("name", f"node-{k}"),
                "capacity": res(capacity),
                "reserved": res(node.get("used", {})),
                "usage": res(node.get("usage", node.get("used", {}))),
                "labels": node.get("labels", {}),
            }
        )
    return NodeView.from_reports(reports)


def req(cpus: float = 1, memory: float = 1, gpus: float = 0, **kw) -> Request:
    return Request(cpus, memory * GI, gpus, **kw)


def state(seed: int = 0) -> PolicyState:
    return PolicyState.seeded(seed)


# -- the node view ---------------------------------------------------------------------------


def test_from_reports_fills_missing_keys_with_zero_and_reads_memory_units():
    nodes = NodeView.from_reports([{"node": "a", "capacity": {"cpus": 2, "memory": "4Gi"}}, {"node": "b"}])
    assert nodes.names == ("a", "b")
    assert nodes.capacity.tolist() == [[2, 4 * GI, 0, 0], [0, 0, 0, 0]]
    assert nodes.reserved.sum() == 0 and nodes.usage.sum() == 0
    assert nodes.labels == ({}, {})


def test_with_reserved_returns_a_copy_and_leaves_gpu_memory_alone():
    nodes = view({"cpus": 4, "memory": 8, "gpus": 1, "gpu_memory": 16})
    after = nodes.with_reserved(0, Request(1, GI, 1, 8 * GI))
    assert nodes.reserved.sum() == 0
    assert after.reserved[0].tolist() == [1, GI, 1, 0]
    assert after.free()[0].tolist() == [3, 7 * GI, 0, 16 * GI]


def test_request_from_resources_accepts_spec_shapes():
    r = Request.from_resources({"cpus": 2, "memory": "512Mi", "gpus": 1, "gpu_memory": None})
    assert r.vector().tolist() == [2, 512 * 2**20, 1, 0]
    assert Request.from_resources({"cpus": 1, "memory": 1}, {"zone": "a"}).node_selector == {"zone": "a"}


# -- filter ----------------------------------------------------------------------------------


def test_feasible_needs_every_resource_free():
    nodes = view(
        {"cpus": 4, "memory": 8, "used": {"cpus": 3}},  # too few CPUs left
        {"cpus": 4, "memory": 8, "used": {"memory": 7}},  # too little memory left
        {"cpus": 4, "memory": 8},  # no GPU
        {"cpus": 4, "memory": 8, "gpus": 1, "gpu_memory": 8},  # GPU too small
        {"cpus": 4, "memory": 8, "gpus": 2, "gpu_memory": 16},
    )
    r = req(2, 2, 1, gpu_memory=12 * GI)
    assert feasible(nodes, r).tolist() == [False, False, False, False, True]
    assert feasible(nodes, req(2, 2)).tolist() == [False, False, True, True, True]


def test_feasible_counts_fractional_cpus_exactly():
    nodes = view({"cpus": 0.3, "memory": 1, "used": {"cpus": 0.1}})
    assert feasible(nodes, Request(0.2, 0)).tolist() == [True]


def test_node_selector_keeps_only_matching_nodes():
    nodes = view(
        {"cpus": 8, "memory": 8, "labels": {"zone": "a"}},
        {"cpus": 8, "memory": 8, "labels": {"zone": "b", "disk": "ssd"}},
    )
    assert feasible(nodes, req(node_selector={"zone": "b"})).tolist() == [False, True]
    assert feasible(nodes, req(node_selector={"zone": "b", "disk": "hdd"})).tolist() == [
        False,
        False,
    ]
    assert choose("spread", nodes, req(node_selector={"zone": "b"}), state()).node == "node-2"


# -- each policy on hand-made states ---------------------------------------------------------


def test_spread_picks_the_node_least_loaded_on_its_busiest_resource():
    nodes = view(
        {"cpus": 8, "memory": 16, "used": {"cpus": 1, "memory": 14}},  # memory nearly full
        {"cpus": 8, "memory": 16, "used": {"cpus": 4, "memory": 4}},  # half the CPUs
        {"cpus": 8, "memory": 16, "used": {"cpus": 6, "memory": 1}},
    )
    assert choose("spread", nodes, req(1, 1), state()).node == "node-2"


def test_spread_counts_the_job_against_node_size():
    small_empty = {"cpus": 2, "memory": 4}
    big_busy = {"cpus": 16, "memory": 32, "used": {"cpus": 4, "memory": 8}}
    # 2 CPUs are all of the small node but only 12% more of the big one: 37% < 100%.
    assert choose("spread", view(small_empty, big_busy), req(2, 1), state()).node == "node-2"


def test_spread_weighs_measured_usage():
    same_reserved = {"cpus": 8, "memory": 16, "used": {"cpus": 2, "memory": 2}}
    busy = {**same_reserved, "usage": {"cpus": 8, "memory": 2}}  # a job busier than it asked
    quiet = {**same_reserved, "usage": {"cpus": 1, "memory": 2}}
    assert choose("spread", view(busy, quiet), req(1, 1), state()).node == "node-2"
    loads = spread_load(view(busy, quiet), req(1, 1))
    # 0.7 × 3/8 + 0.3 × 9/8 = 0.6 on the busy node's CPUs; 0.7 × 3/8 + 0.3 × 2/8 on the quiet.
    assert loads[0] == pytest.approx(0.6 + 0.01 * (0.6 + 3 / 16) / 2)
    assert loads[1] == pytest.approx(0.3375 + 0.01 * (0.3375 + 3 / 16) / 2)


def test_cpu_jobs_keep_off_gpu_nodes_while_another_node_fits():
    gpu_node = {"cpus": 32, "memory": 64, "gpus": 8, "gpu_memory": 32}
    cpu_node = {"cpus": 4, "memory": 8, "used": {"cpus": 2, "memory": 2}}
    for policy in ("spread", "pack", "balanced"):
        assert choose(policy, view(gpu_node, cpu_node), req(1, 1), state()).node == "node-2"
        # Only the GPU node fits: it takes the job rather than leave it waiting.
        assert choose(policy, view(gpu_node, cpu_node), req(4, 1), state()).node == "node-1"


def test_spread_puts_a_gpu_job_where_the_fewest_gpus_stay_free():
    empty_eight = {"cpus": 32, "memory": 64, "gpus": 8, "gpu_memory": 32}
    four_with_one_free = {
        "cpus": 16,
        "memory": 64,
        "gpus": 4,
        "gpu_memory": 32,
        "used": {"gpus": 3, "cpus": 12},
    }
    # Spreading would pick the empty 8-GPU node; best fit keeps it whole for an 8-GPU job.
    nodes = view(empty_eight, four_with_one_free)
    assert choose("spread", nodes, req(1, 1, 1), state()).node == "node-2"


def test_pack_picks_the_most_allocated_node_that_fits():
    nodes = view(
        {"cpus": 8, "memory": 16, "used": {"cpus": 2, "memory": 4}},
        {"cpus": 8, "memory": 16, "used": {"cpus": 6, "memory": 12}},
        {"cpus": 8, "memory": 16, "used": {"cpus": 7.5, "memory": 15}},  # does not fit
    )
    assert choose("pack", nodes, req(1, 2), state()).node == "node-2"


def test_balanced_evens_out_the_resources_of_a_node():
    nodes = view(
        {"cpus": 8, "memory": 16, "used": {"cpus": 1, "memory": 8}},  # memory-heavy already
        {"cpus": 8, "memory": 16, "used": {"cpus": 4, "memory": 2}},  # CPU-heavy already
    )
    # A memory-heavy job evens out the CPU-heavy node.
    assert choose("balanced", nodes, req(1, 6), state()).node == "node-2"
    # A CPU-heavy job evens out the memory-heavy node.
    assert choose("balanced", nodes, req(4, 1), state()).node == "node-1"


def test_p2c_takes_the_less_loaded_of_two_drawn_nodes():
    nodes = view(
        {"cpus": 8, "memory": 16, "used": {"cpus": 6}},
        {"cpus": 8, "memory": 16, "used": {"cpus": 1}},
    )
    # With two feasible nodes both are drawn: the less loaded one wins, every time.
    assert {choose("p2c", nodes, req(), state(s)).node for s in range(20)} == {"node-2"}
    many = view(*[{"cpus": 8, "memory": 16, "used": {"cpus": c}} for c in range(8)])
    picks = {choose("p2c", many, req(), state(s)).node for s in range(50)}
    assert len(picks) > 1  # not all on the least loaded node: no herding
    assert "node-8" not in picks  # the most loaded never wins a pair


def test_p2c_explains_the_nodes_it_did_not_draw():
    many = view(*[{"cpus": 8, "memory": 16} for _ in range(5)])
    decision = choose("p2c", many, req(), state())
    drawn = [c for c in decision.candidates if c["score"] is not None]
    assert len(drawn) == 2
    assert all(c["why_not"] for c in decision.candidates if c["score"] is None)


def test_random_picks_uniformly_among_feasible_nodes_only():
    nodes = view({"cpus": 4, "memory": 8}, {"cpus": 1, "memory": 8}, {"cpus": 4, "memory": 8})
    st8 = state(8)
    picks = [choose("random", nodes, req(2, 1), st8).node for _ in range(300)]
    assert set(picks) == {"node-1", "node-3"}
    assert 100 < picks.count("node-1") < 200


def test_round_robin_walks_the_feasible_nodes_in_turn():
    nodes = view({"cpus": 4, "memory": 8}, {"cpus": 1, "memory": 8}, {"cpus": 4, "memory": 8})
    st0 = state()
    picks = [choose("round_robin", nodes, req(2, 1), st0).node for _ in range(4)]
    assert picks == ["node-1", "node-3", "node-1", "node-3"]


def test_seed_ignores_what_fits():
    nodes = view({"cpus": 1, "memory": 1}, {"cpus": 64, "memory": 256})
    picks = {choose("seed", nodes, req(8, 8), state(s)).node for s in range(30)}
    assert picks == {"node-1", "node-2"}  # it over-commits node-1, as the original design did
    decision = choose("seed", nodes, req(8, 8), state(1))
    assert np.isfinite(score("seed", nodes, req(8, 8), state())).all()
    assert decision.reason is None


def test_ties_go_to_the_lowest_index():
    same = {"cpus": 4, "memory": 8}
    for policy in ("spread", "pack", "balanced", "round_robin"):
        assert choose(policy, view(same, same, same), req(), state()).node == "node-1"


def test_no_node_fits_gives_none_and_a_reason():
    nodes = view({"cpus": 2, "memory": 2})
    for policy in POLICIES:
        if policy == "seed":
            continue
        decision = choose(policy, nodes, req(4, 1), state())
        assert decision.node is None and decision.index is None
        assert decision.reason == "needs 4 cpus; largest free is 2 cpus on node-1"


@st.composite
def node_states(draw):
    n = draw(st.integers(1, 8))
    rows = []
    for _ in range(n):
        cap = [
            draw(st.sampled_from([1, 2, 4, 8])),
            draw(st.sampled_from([1, 4, 16])) * GI,
            draw(st.sampled_from([0, 0, 4])),
            0.0,
        ]
        cap[3] = 16 * GI if cap[2] else 0.0
        used = [draw(st.floats(0, 1)) * c for c in cap[:3]] + [0.0]
        rows.append((cap, used))
    capacity = np.array([r[0] for r in rows])
    reserved = np.array([r[1] for r in rows])
    usage = reserved * draw(st.floats(0, 2))
    return NodeView(tuple(f"n{i}" for i in range(n)), capacity, reserved, usage)


@settings(max_examples=150, deadline=None)
@given(
    nodes=node_states(),
    cpus=st.sampled_from([0.5, 1, 2, 4]),
    memory=st.sampled_from([0.5, 2, 8]),
    gpus=st.sampled_from([0, 0, 1, 2]),
    seed=st.integers(0, 1000),
)
def test_no_policy_but_seed_ever_chooses_an_infeasible_node(nodes, cpus, memory, gpus, seed):
    request = req(cpus, memory, gpus)
    mask = feasible(nodes, request)
    for policy in POLICIES:
        decision = choose(policy, nodes, request, state(seed))
        if policy == "seed":
            assert decision.node is not None
            continue
        if mask.any():
            assert decision.index is not None and mask[decision.index], policy
            free = nodes.free()[decision.index]
            assert (free[:3] + 1e-9 >= request.vector()[:3]).all()
        else:
            assert decision.node is None and decision.reason


# -- explanations ----------------------------------------------------------------------------


def test_unfit_reason_names_the_scarcest_resource_and_where_most_is_free():
    nodes = view(
        {"cpus": 8, "memory": 4, "used": {"memory": 3}},
        {"cpus": 8, "memory": 4, "used": {"memory": 4}},
        {"cpus": 8, "memory": 4, "used": {"memory": 2}},
    )
    assert unfit_reason(nodes, req(1, 6)) == "needs 6Gi memory; largest free is 2Gi on node-3"
    assert unfit_reason(nodes, req(9, 6)).startswith("needs 6Gi memory")  # nothing has 6Gi
    gpu = view({"cpus": 8, "memory": 8, "gpus": 2, "used": {"gpus": 1}})
    assert unfit_reason(gpu, req(1, 1, 2)) == "needs 2 gpus; largest free is 1 gpus on node-1"


def test_unfit_reason_when_no_single_node_has_it_all():
    nodes = view(
        {"cpus": 8, "memory": 8, "used": {"memory": 7}},  # CPUs, no memory
        {"cpus": 8, "memory": 8, "used": {"cpus": 7}},  # memory, no CPUs
    )
    reason = unfit_reason(nodes, req(4, 4))
    assert reason.startswith("needs 4 cpus, 4Gi memory on one node; no node has all of it free")
    assert "closest:" in reason


def test_unfit_reason_without_nodes_or_labels():
    assert unfit_reason(NodeView.empty(), req()) == "no live nodes"
    nodes = view({"cpus": 8, "memory": 8, "labels": {"zone": "a"}})
    assert unfit_reason(nodes, req(node_selector={"zone": "b"})) == "no live node has labels zone=b"
    assert unfit_reason(nodes, req(16, node_selector={"zone": "a"})).endswith(
        "on node-1 among nodes with zone=a"
    )


def test_never_fits_names_the_field_and_the_largest_node():
    nodes = view({"cpus": 4, "memory": 1}, {"cpus": 2, "memory": 2})
    assert never_fits(nodes, req(1, 64)) == (
        "resources.memory",
        "needs 64Gi memory; the largest node has 2Gi (node-2)",
    )
    assert never_fits(nodes, req(1, 1, 1))[0] == "resources.gpus"
    field, reason = never_fits(nodes, req(4, 2))  # each fits somewhere, never both on one node
    assert field == "resources" and "no node has all of that" in reason


def test_never_fits_is_none_when_an_empty_node_would_do():
    busy = view({"cpus": 4, "memory": 8, "used": {"cpus": 4, "memory": 8}})
    assert never_fits(busy, req(4, 8)) is None  # full now, but it would fit when empty
    assert never_fits(NodeView.empty(), req(64, 64)) is None
    labelled = view({"cpus": 4, "memory": 8, "labels": {"zone": "a"}})
    assert never_fits(labelled, req(node_selector={"zone": "b"})) is None  # a node may join


def test_decision_explains_every_node_and_is_json_safe():
    nodes = view(
        {"cpus": 1, "memory": 8},
        {"cpus": 8, "memory": 8, "labels": {"zone": "a"}},
        {"cpus": 8, "memory": 8, "labels": {"zone": "b"}},
    )
    decision = choose("spread", nodes, req(2, 1, node_selector={"zone": "b"}), state())
    assert decision.node == "node-3"
    by_node = {c["node"]: c for c in decision.candidates}
    assert by_node["node-1"]["why_not"] == "labels do not match zone=b"
    assert by_node["node-3"]["feasible"] and by_node["node-3"]["score"] is not None
    assert set(by_node["node-3"]) == {"node", "feasible", "score", "free", "why_not"}
    record = decision.as_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["candidates"][0]["node"] == "node-3"  # the chosen one first
    assert record["feasible"] == 1 and record["nodes"] == 3


def test_decision_says_why_a_node_lacks_room():
    nodes = view({"cpus": 2, "memory": 8, "used": {"cpus": 1}}, {"cpus": 8, "memory": 8})
    decision = choose("pack", nodes, req(2, 1), state())
    assert decision.candidates[0]["why_not"] == "needs 2 cpus; 1 cpus free"
    assert decision.as_dict(limit=1)["candidates_omitted"] == 1


def test_every_policy_has_a_summary_and_columns_are_as_documented():
    assert RESOURCES == ("cpus", "memory", "gpus", "gpu_memory")
    assert list(POLICIES) == ["spread", "pack", "balanced", "p2c", "random", "round_robin", "seed"]
    assert all(p.summary for p in POLICIES.values())
    with pytest.raises(ValueError, match="unknown placement policy"):
        choose("fastest", view({"cpus": 1, "memory": 1}), req(), state())
